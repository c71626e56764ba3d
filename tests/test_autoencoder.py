import numpy as np
import pytest
import torch

from bench import learned
from bench.codec import CodecError, PayloadError
from bench.registry import get_codec
from bench_codecs.autoencoder import Autoencoder, AutoencoderCodec
from conftest import training


@pytest.fixture(scope="module")
def train_small(mnist5k):
    return mnist5k.train.images[:600]


@pytest.fixture(scope="module")
def ae39(train_small, tmp_path_factory):
    return AutoencoderCodec(39, epochs=2).fit(training(train_small, tmp_path_factory.mktemp("c")))


def test_payload_is_exactly_latent_bytes(ae39, digits):
    payloads = ae39.encode(digits)
    assert payloads.sizes.tolist() == [39] * len(digits)
    assert payloads.as_array().shape == (len(digits), 39)


def test_decode_of_encode_is_the_models_quantized_forward_pass(ae39, digits):
    decoded = ae39.decode(ae39.encode(digits))
    with torch.inference_mode():
        x = torch.from_numpy(digits).float().div(255).unsqueeze(1)
        forward = ae39.model(x).mul(255).round().to(torch.uint8).squeeze(1).numpy()
    assert np.array_equal(decoded, forward)


def test_subpixel_form_is_the_same_function_as_the_transposed_conv():
    from torch import nn

    from bench_codecs.autoencoder import SubPixelConvTranspose

    torch.manual_seed(0)
    for cin, cout in ((16, 1), (8, 3)):
        ct = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        x = torch.randn(5, cin, 7, 9)
        with torch.no_grad():
            torch.testing.assert_close(SubPixelConvTranspose(ct)(x), ct(x), atol=1e-5, rtol=1e-5)
    assert set(SubPixelConvTranspose(ct).state_dict()) == {"source.weight", "source.bias"}


def test_the_family_has_the_published_latent_sizes():
    sizes = {name: get_codec(name).latent for name in ("ae50", "ae90", "ae95", "ae99")}
    assert sizes == {"ae50": 392, "ae90": 78, "ae95": 39, "ae99": 8}


def test_training_reduces_the_loss(train_small, tmp_path):
    codec = AutoencoderCodec(8, epochs=4).fit(training(train_small, tmp_path))
    train, validation = codec.history.train, codec.history.validation
    assert train[-1] < train[0] * 0.95 and len(validation) == 4 and validation[-1] < validation[0]


def test_training_is_deterministic_on_cpu(train_small, tmp_path):
    a = AutoencoderCodec(8, epochs=1, seed=3).fit(training(train_small[:200], tmp_path / "a"))
    b = AutoencoderCodec(8, epochs=1, seed=3).fit(training(train_small[:200], tmp_path / "b"))
    assert a.trained_now and b.trained_now
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_starts_from_the_pca_control(train_small):
    from bench_codecs.pca import PCACodec, fit_pca

    model = Autoencoder(8).eval()
    model.init_from_pca(fit_pca(train_small, 8))
    pca = PCACodec(8).fit(training(train_small))
    with torch.inference_mode():
        z = model.encoder(torch.from_numpy(train_small[:50]).float().div(255).unsqueeze(1))
    latents = z.mul(255).round().to(torch.uint8).numpy()
    diff = np.abs(latents.astype(int) - pca.encode(train_small[:50]).as_array().astype(int))
    assert diff.max() <= 1  # float32 rounding at a level boundary, nothing more


def test_training_that_ends_worse_than_the_pca_start_keeps_the_start(train_small, tmp_path, monkeypatch):
    """A learning rate far too high wrecks the model (as a few odd images did: 6 dB where PCA gave
    29): the codec keeps its PCA start, says so, and codes as the PCA control does."""
    from bench_codecs import autoencoder
    from bench_codecs.pca import PCACodec

    monkeypatch.setitem(autoencoder.RECIPE, "lr", 30.0)
    notices = []
    codec = AutoencoderCodec(8, epochs=1).fit(training(train_small[:200], tmp_path, log=notices.append))
    assert codec.history.validation[-1] > 0.05  # training did end far worse
    assert codec.history.kept.startswith("the PCA start")
    assert notices == [f"ae latent=8: kept {codec.history.kept}"]
    again = AutoencoderCodec(8, epochs=1).fit(training(train_small[:200], tmp_path))
    assert not again.trained_now and again.history.kept == codec.history.kept  # in the checkpoint
    pca = PCACodec(8).fit(training(train_small[:200]))
    diff = codec.encode(train_small[:50]).as_array().astype(int) - pca.encode(train_small[:50]).as_array()
    assert np.abs(diff).max() <= 1  # float32 rounding at a level boundary, nothing more


def test_cache_hit_does_not_retrain(train_small, tmp_path):
    first = AutoencoderCodec(8, epochs=1).fit(training(train_small, tmp_path))
    assert first.trained_now and first.checkpoint.exists()
    second = AutoencoderCodec(8, epochs=1).fit(training(train_small, tmp_path))
    assert not second.trained_now
    for pa, pb in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(pa, pb)
    other_seed = AutoencoderCodec(8, epochs=1, seed=1).fit(training(train_small, tmp_path))
    assert other_seed.trained_now  # the key covers everything that changes the weights
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_checkpoint_is_reported_and_retrained(train_small, tmp_path):
    first = AutoencoderCodec(8, epochs=1).fit(training(train_small, tmp_path))
    first.checkpoint.write_bytes(first.checkpoint.read_bytes()[:100])
    messages = []
    again = AutoencoderCodec(8, epochs=1).fit(training(train_small, tmp_path, log=messages.append))
    assert again.trained_now
    assert len(messages) == 1 and "corrupt or incompatible" in messages[0]
    assert str(first.checkpoint) in messages[0]
    AutoencoderCodec(8, epochs=1).fit(training(train_small, tmp_path, log=messages.append))
    assert len(messages) == 1  # the rewritten checkpoint loads


def test_unwritable_cache_falls_back_with_a_stated_reason(train_small, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    messages = []
    codec = AutoencoderCodec(8, epochs=1).fit(training(train_small, blocker / "cache",
                                                       log=messages.append))
    assert codec.model is not None
    assert len(messages) == 1 and "used for this run only" in messages[0]


def test_wrong_payloads_are_refused(ae39, digits):
    with pytest.raises(PayloadError, match="payload 1 has 38 bytes; its payloads have exactly 39"):
        ae39.decode([bytes(39), bytes(38)])
    other = list(ae39.encode(np.zeros((1, 20, 30), np.uint8)))
    with pytest.raises(PayloadError, match="payload 1 has 39 bytes; its payloads have exactly 81"):
        ae39.decode(other + [bytes(39)])
    with pytest.raises(CodecError, match="not trained"):
        AutoencoderCodec(39).encode(digits)


def test_every_tile_of_a_large_batch_is_coded(ae39, digits):
    """More tiles than images and than one chunk of the encoder: each tile coded as if alone."""
    images = np.concatenate([np.tile(digits[:150], (1, 2, 2))])  # 150 images of 56x56, 600 tiles
    decoded = ae39.decode(ae39.encode(images))
    alone = np.concatenate([ae39.decode(ae39.encode(images[i : i + 1])) for i in (0, 75, 149)])
    assert np.array_equal(decoded[[0, 75, 149]], alone)


@pytest.mark.parametrize("shape", [(32, 32), (40, 24), (20, 20), (64, 48), (8, 8), (256, 256)])
def test_images_of_another_size_travel_in_tiles_with_their_size(shape, ae39, digits):
    """Tiles of the 28x28 canvas, edge-padded, after a 3-byte size; the decoded image is the size
    it was, and a digit in its top-left corner is reconstructed as well as alone."""
    images = np.zeros((3, *shape), np.uint8)
    h, w = min(shape[0], 28), min(shape[1], 28)
    images[:, :h, :w] = digits[:3, :h, :w]
    payloads = ae39.encode(images)
    tiles = -(-shape[0] // 28) * -(-shape[1] // 28)
    assert (payloads.sizes == 3 + 39 * tiles).all()
    decoded = ae39.decode(payloads)
    assert decoded.shape == images.shape
    if shape[0] >= 28 and shape[1] >= 28:  # the corner tile is the digit itself
        assert np.array_equal(decoded[:, :28, :28], ae39.decode(ae39.encode(digits[:3])))


def test_images_larger_than_64x64_train_and_travel_as_32x32_canvases(train_small, tmp_path):
    """Digits tiled to 96x96: the autoencoder sees their 32x32 tiles, so its weights are those of
    a 32x32 model; an image of the training size is its nine canvases' latent bytes."""
    images = np.tile(train_small[:200], (1, 4, 4))[:, :96, :96]
    codec = AutoencoderCodec(39, epochs=1).fit(training(images, tmp_path))
    assert codec.model.shape == (32, 32) and codec.header_bytes((96, 96)) == 0
    payloads = codec.encode(images[:4])
    assert (payloads.sizes == 9 * 39).all()
    decoded = codec.decode(payloads)
    assert decoded.shape == (4, 96, 96)
    corner = codec.decode(codec.encode(np.ascontiguousarray(images[:4, :32, :32])))
    assert np.array_equal(corner, decoded[:, :32, :32])  # a tile is coded as if alone
    odd = codec.encode(np.ascontiguousarray(images[:2, :70, :50]))
    assert (odd.sizes == 3 + 3 * 2 * 39).all() and codec.decode(odd).shape == (2, 70, 50)


def test_side_info_is_the_decoders_float32_weights(ae39):
    width = 32
    linear = 39 * 784 + 784
    conv = (39 * width * 49 + width * 49) + (width * width // 2 * 9 + width // 2) \
        + 4 * (width // 2) + (width // 2 * 9 + 1)  # BatchNorm: weight, bias, running mean, var
    assert ae39.side_info_bytes == 4 * (linear + conv)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["95", "99"])
def test_default_recipe_beats_its_pca_control_by_a_decibel(level, mnist5k, tmp_path):
    """The quality bar of the README's table, with the default recipe (99 % has the least room)."""
    from bench.metrics import mse, psnr_from_mse

    test = mnist5k.test.images
    psnr = {}
    for family in ("ae", "pca"):
        codec = get_codec(f"{family}{level}")
        codec.fit(training(mnist5k.train.images, tmp_path, mnist5k.validation.images))
        psnr[family] = psnr_from_mse(mse(test, codec.decode(codec.encode(test))).mean())
    assert psnr["ae"] >= psnr["pca"] + 1.0, psnr


def test_bf16_is_used_only_within_its_psnr_budget(ae39, mnist5k, monkeypatch):
    # The decision that runs on CUDA after loading, made here on the CPU's bf16 autocast.
    x = mnist5k.test.images
    fp32 = ae39.decode(ae39.encode(x))
    try:
        ae39.calibrate_bf16(x)
        delta = ae39.bf16_psnr_delta
        assert delta is not None and delta != 0  # bf16 really ran: some pixels moved
        assert ae39.autocast == (abs(delta) <= learned.BF16_MAX_PSNR_DELTA_DB)
        monkeypatch.setattr(learned, "BF16_MAX_PSNR_DELTA_DB", abs(delta) / 2)
        ae39.calibrate_bf16(x)
        assert not ae39.autocast  # over budget: back to fp32, bit-identical to plain inference
        assert np.array_equal(ae39.decode(ae39.encode(x)), fp32)
        assert ae39.precision == f"fp32 (bf16 {delta:+.3f} dB vs fp32)"  # as the throughput table shows it
    finally:
        ae39.autocast, ae39.bf16_psnr_delta = False, None
