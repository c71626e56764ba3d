"""Built-in codecs of aecodec-bench, registered lazily: nothing heavy is imported here."""

from bench.codec import Param
from bench.registry import CodecInfo

LATENT_LEVELS = {"50": 392, "90": 78, "95": 39, "99": 8}  # round(784 * (1 - p))

_quality = Param("quality", int, 75, 1, 100, help="encoder quality, 1 (smallest) .. 100 (best)")


def _latent_family(prefix: str, factory: str, what: str, params: tuple, devices: tuple):
    return [
        CodecInfo(
            name=f"{prefix}{pct}",
            factory=factory,
            lossless=False,
            description=f"{what}, {k} one-byte latents ({pct} % by dimension)",
            params=(Param("latent", int, k, k, k, help="fixed by the name"), *params),
            devices=devices,
            family=prefix,
            rate_param="latent",
            learned=True,
        )
        for pct, k in LATENT_LEVELS.items()
    ]


_training = (
    Param("epochs", int, 8, 1, 10_000, help="training epochs"),
    Param("seed", int, 0, 0, 2**31 - 1, help="training seed"),
)

BUILTINS = [
    CodecInfo("raw", "bench_codecs.classical:Raw", True,
              "uncompressed reference: H*W bytes, the size is side information", family="raw"),
    CodecInfo("jpeg", "bench_codecs.classical:Jpeg", False,
              "JPEG via libjpeg-turbo, grayscale, baseline",
              (_quality, Param("optimize", bool, False, help="optimized Huffman tables")),
              family="jpeg", rate_param="quality", sweep="quality=10..95"),
    CodecInfo("png", "bench_codecs.classical:Png", True, "PNG via libpng, 8-bit gray",
              (Param("level", int, 9, 0, 9, help="zlib level"),), family="png"),
    CodecInfo("webp", "bench_codecs.classical:WebP", False,
              "lossy WebP via libwebp (no gray mode: sent as R=G=B)",
              (_quality, Param("method", int, 4, 0, 6, help="effort")), family="webp",
              rate_param="quality", sweep="quality=10..95"),
    CodecInfo("webp-lossless", "bench_codecs.classical:WebPLossless", True,
              "lossless WebP via libwebp", (Param("method", int, 4, 0, 6, help="effort"),),
              family="webp-lossless"),
    CodecInfo("jpegxl", "bench_codecs.classical:JpegXL", False, "lossy JPEG XL via libjxl",
              (_quality, Param("effort", int, 7, 1, 9, help="encoder effort")), family="jpegxl",
              rate_param="quality", sweep="quality=10..95"),
    CodecInfo("jpegxl-lossless", "bench_codecs.classical:JpegXLLossless", True,
              "lossless JPEG XL via libjxl",
              (Param("effort", int, 7, 1, 9, help="encoder effort"),), family="jpegxl-lossless"),
    CodecInfo("zlib", "bench_codecs.classical:Zlib", True,
              "zlib (deflate) over the raw pixels, 4-byte size header",
              (Param("level", int, 9, 0, 9, help="compression level"),), family="zlib"),
    CodecInfo("lzma", "bench_codecs.classical:Lzma", True,
              "LZMA (.lzma container) over the raw pixels, 4-byte size header",
              (Param("preset", int, 6, 0, 9, help="compression preset"),), family="lzma"),
    CodecInfo("nvjpeg", "bench_codecs.nvjpeg:NvJpeg", False,
              "JPEG encoded and decoded on the GPU by nvJPEG (torchvision.io); CUDA only",
              (_quality,), devices=("cuda",), family="nvjpeg", rate_param="quality",
              sweep="quality=10..95"),
    *_latent_family("ae", "bench_codecs.autoencoder:AutoencoderCodec",
                    "conv autoencoder", _training, ("cpu", "cuda")),
    *_latent_family("pca", "bench_codecs.pca:PCACodec", "PCA control", (), ("cpu",)),
]
