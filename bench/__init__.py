"""aecodec-bench: do learned codecs beat the classical ones on your images?

    from bench import get_codec, list_codecs, load_dataset, CodecError
    codec = get_codec("jpeg:quality=50")
    payloads = codec.encode(images)          # (N, H, W) uint8 -> Payloads
    restored = codec.decode(payloads)
"""

from bench.codec import BenchError, Codec, CodecError, Param, PayloadError, Payloads
from bench.data import load_dataset
from bench.registry import get_codec, list_codecs, parse_specs

__all__ = ["BenchError", "Codec", "CodecError", "Param", "PayloadError", "Payloads",
           "get_codec", "list_codecs", "load_dataset", "parse_specs"]
__version__ = "0.1.0"
