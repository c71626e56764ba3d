"""The throughput measurement: which calls are timed, how many rounds, what the warm-up codes."""

import numpy as np

from bench import timing
from bench.codec import Codec, Payloads
from bench.registry import default_registry
from bench.runner import _throughput


def test_warm_up_calls_warm_and_the_rounds_time_fn():
    calls = []
    t, result = timing.measure(lambda: calls.append("fn") or len(calls), images=10, rounds=4, warmup=2,
                               warm=lambda: calls.append("warm"))
    assert calls == ["warm", "warm", "fn", "fn", "fn", "fn"]
    assert len(t.seconds) == 4 and result == 6  # the last timed call's result
    assert t.min_img_s <= t.median_img_s <= t.max_img_s


def test_rounds_stop_at_min_rounds_once_the_budget_is_spent(monkeypatch):
    monkeypatch.setattr(timing, "ROUNDS_BUDGET_S", 0.0)
    t, _ = timing.measure(lambda: None, images=1, rounds=9, warmup=0)
    assert len(t.seconds) == timing.MIN_ROUNDS


class Recording(Codec):
    """Stores pixels as they are, and records the batch sizes it is called with."""

    def __init__(self):
        self.calls = []

    def encode(self, images):
        self.calls.append(("encode", len(images)))
        return Payloads.from_array(images.reshape(len(images), -1).copy())

    def decode(self, payloads):
        self.calls.append(("decode", len(payloads)))
        return payloads.as_array().reshape(len(payloads), 28, 28)


def test_the_warm_up_codes_the_head_of_the_batch_and_the_rounds_all_of_it():
    codec = Recording()
    batch = np.random.default_rng(0).integers(0, 256, (600, 28, 28), dtype=np.uint8)
    rows = _throughput(codec, default_registry().parse("raw")[0], "cpu", batch, rounds=3, warmup=1)
    head = timing.WARMUP_IMAGES
    assert codec.calls == ([("encode", head)] + [("encode", 600)] * 3
                           + [("decode", head)] + [("decode", 600)] * 3)
    assert [r["rounds"] for r in rows] == [3, 3] and rows[0]["psnr_db"] == float("inf")
