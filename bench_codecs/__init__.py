"""Built-in codecs of aecodec-bench, registered lazily: nothing heavy is imported here."""

from bench.codec import CodecInfo, Param

LATENT_LEVELS = {"50": 392, "90": 78, "95": 39, "99": 8}  # round(784 * (1 - p))
# factorized: quality -> λ (distortion weight), one model for all eight (mnist-5k: 1 is 11 B per
# digit at 18.1 dB, 8 187 B at 41.2 dB; the PSNR of each point about that of the per-λ models).
FACTORIZED_LAMBDAS = {1: 6.3e-5, 2: 3.2e-4, 3: 1.16e-3, 4: 3.6e-3, 5: 7.6e-3, 6: 0.0207, 7: 0.0547, 8: 0.19}
# ar-lossy: the level counts its one model is trained on, in the order of its level embedding.
AR_LOSSY_LEVELS = (16, 12, 10, 8, 6, 5, 4, 3)

_quality = Param("quality", int, 75, 1, 100, help="encoder quality, 1 (smallest) .. 100 (best)")
# libwebp and libjxl take quality 0 too (their smallest files).
_quality0 = Param("quality", int, 75, 0, 100, help="encoder quality, 0 (smallest) .. 100 (best)")


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

_shared = Param("shared_header", bool, False,
                help="send the header every file shares once, as side information (chosen in "
                     "fit from the training split); files that do not share it are sent whole")
_speed = Param("speed", int, 6, 0, 10, help="libavif encoder speed, 0 (slowest, smallest) .. 10")
_resolutions = Param("resolutions", int, 6, 1, 6,
                     help="wavelet resolution levels (imagecodecs caps them by the image size: "
                          "2 at 28x28)")
_ar_width = Param("width", int, 64, 8, 256, help="hidden units of both layers")

BUILTINS = [
    CodecInfo("raw", "bench_codecs.classical:Raw", True,
              "uncompressed reference: H*W bytes, the size is side information", family="raw"),
    CodecInfo("jpeg", "bench_codecs.classical:Jpeg", False,
              "JPEG via libjpeg-turbo, grayscale, baseline",
              (_quality, Param("optimize", bool, False, help="optimized Huffman tables"), _shared),
              family="jpeg", rate_param="quality",
              sweep="optimize=1:quality=1/3/5/8/12/18/25/35/50/65/80/90/95"),
    CodecInfo("png", "bench_codecs.classical:Png", True, "PNG via libpng, 8-bit gray",
              (Param("level", int, 9, 0, 9, help="zlib level"), _shared), family="png"),
    CodecInfo("webp", "bench_codecs.classical:WebP", False,
              "lossy WebP via libwebp (no gray mode: sent as R=G=B)",
              (_quality0, Param("method", int, 4, 0, 6, help="effort")), family="webp",
              rate_param="quality", sweep="method=6:quality=0/1/3/5/10/20/30/40/50/60/70/80/90/95"),
    CodecInfo("webp-lossless", "bench_codecs.classical:WebPLossless", True,
              "lossless WebP via libwebp", (Param("method", int, 4, 0, 6, help="effort"),),
              family="webp-lossless"),
    CodecInfo("jpegxl", "bench_codecs.classical:JpegXL", False, "lossy JPEG XL via libjxl, gray",
              (_quality0, Param("effort", int, 7, 1, 9, help="encoder effort")), family="jpegxl",
              rate_param="quality", sweep="effort=9:quality=0/5/10/20/30/40/50/60/70/80/90/95"),
    CodecInfo("jpegxl-lossless", "bench_codecs.classical:JpegXLLossless", True,
              "lossless JPEG XL via libjxl, gray",
              (Param("effort", int, 7, 1, 9, help="encoder effort"),), family="jpegxl-lossless"),
    CodecInfo("avif", "bench_codecs.classical:Avif", False,
              "lossy AVIF via libavif/libaom: monochrome AV1 (YUV 4:0:0; R=G=B in, luma kept)",
              (Param("quality", int, 60, 0, 99, help="libavif quality, 0 (smallest) .. 99"),
               _speed, _shared),
              family="avif", rate_param="quality",
              sweep="speed=4:quality=0/5/10/15/20/30/40/50/60/70/80/90"),
    CodecInfo("avif-lossless", "bench_codecs.classical:AvifLossless", True,
              "lossless AVIF via libavif/libaom: monochrome AV1 (YUV 4:0:0)", (_speed, _shared),
              family="avif-lossless"),
    CodecInfo("jpeg2000", "bench_codecs.classical:Jpeg2000", False,
              "lossy JPEG 2000 via OpenJPEG: J2K codestream, one gray component, 9/7 wavelet",
              (Param("psnr", int, 40, 1, 100,
                     help="OpenJPEG's fixed-quality target: the PSNR (dB) to code to"),
               _resolutions, _shared),
              family="jpeg2000", rate_param="psnr",
              sweep="resolutions=1:psnr=15/19/25/32/38/44/50"),
    CodecInfo("jpeg2000-lossless", "bench_codecs.classical:Jpeg2000Lossless", True,
              "lossless JPEG 2000 via OpenJPEG: J2K codestream, one gray component, 5/3 wavelet",
              (_resolutions, _shared), family="jpeg2000-lossless"),
    CodecInfo("jpegls", "bench_codecs.classical:JpegLS", True,
              "lossless JPEG-LS via CharLS, one gray component", (_shared,), family="jpegls"),
    CodecInfo("jpegls-near", "bench_codecs.classical:JpegLSNear", False,
              "near-lossless JPEG-LS via CharLS: every pixel within near of the original",
              (Param("near", int, 4, 1, 127, help="largest error per pixel, 1 .. 127 (MAXVAL/2)"),
               _shared),
              family="jpegls-near", rate_param="near",
              sweep="near=1/2/3/4/6/8/12/16/24/32/48/64/96/127"),
    CodecInfo("zlib", "bench_codecs.compressors:Zlib", True,
              "zlib (deflate) over the raw pixels, 4-byte size header",
              (Param("level", int, 9, 0, 9, help="compression level"),), family="zlib"),
    CodecInfo("lzma", "bench_codecs.compressors:Lzma", True,
              "LZMA (.lzma container) over the raw pixels, 4-byte size header",
              (Param("preset", int, 6, 0, 9, help="compression preset"),), family="lzma"),
    CodecInfo("zstd", "bench_codecs.compressors:Zstd", True,
              "zstd (the zstandard package) over the raw pixels, 4-byte size header, zstd's content checksum",
              (Param("level", int, 19, 1, 22, help="compression level (20-22: ultra)"),),
              family="zstd"),
    CodecInfo("brotli", "bench_codecs.compressors:Brotli", True,
              "Brotli over the raw pixels, 4-byte size header",
              (Param("level", int, 9, 0, 11, help="compression level"),), family="brotli"),
    CodecInfo("nvjpeg", "bench_codecs.nvjpeg:NvJpeg", False,
              "JPEG encoded and decoded on the GPU by nvJPEG (torchvision.io); CUDA only",
              (_quality,), devices=("cuda",), family="nvjpeg", rate_param="quality",
              sweep="quality=10..95"),
    # One model serves the eight rate points (about a minute to train on one core, cached), so
    # every point of a sweep costs the same one training; the default sweep is four of the eight,
    # 22-41 dB; `--sweep 'auto,factorized:quality=1..8'` runs them all.
    CodecInfo("factorized", "bench_codecs.factorized:FactorizedCodec", False,
              "learned lossy codec trained for rate + λ·distortion (Ballé 2017, factorized prior, "
              "one variable-rate model), range-coded with constriction",
              (Param("quality", int, 6, choices=tuple(FACTORIZED_LAMBDAS),
                     help="rate point 1 (smallest) .. 8 (best): λ 0.000063 .. 0.19, one model for all"),
               Param("epochs", int, 36, 1, 10_000, help="training epochs"), _training[1]),
              devices=("cpu", "cuda"), family="factorized", rate_param="quality",
              sweep="quality=2/4/6/8", learned=True),
    *_latent_family("ae", "bench_codecs.autoencoder:AutoencoderCodec",
                    "conv autoencoder", _training, ("cpu", "cuda")),
    *_latent_family("pca", "bench_codecs.pca:PCACodec", "PCA control", (), ("cpu",)),
    CodecInfo("ar", "bench_codecs.ar:ARCodec", True,
              "learned lossless: autoregressive integer MLP over each pixel's causal neighbourhood, "
              "range-coded (constriction)",
              (_ar_width, Param("epochs", int, 4, 1, 10_000, help="training epochs"), _training[1]),
              devices=("cpu", "cuda"), family="ar", learned=True),
    CodecInfo("ar-lossy", "bench_codecs.ar:ARLossyCodec", False,
              "the ar model on pixels quantised to `levels` levels (0 and 255 exact), one model "
              "for every level count",
              (Param("levels", int, 8, choices=tuple(sorted(AR_LOSSY_LEVELS)), help="levels per pixel"),
               _ar_width,
               Param("epochs", int, 6, 1, 10_000, help="training epochs"), _training[1]),
              devices=("cpu", "cuda"), family="ar-lossy", rate_param="levels",
              # Five of the eight level counts span its curve (26-43 dB) and keep the default run
              # within its time; `--sweep 'auto,ar-lossy:levels=3/4/5/6/8/10/12/16'` runs them all.
              sweep="levels=3/5/8/12/16", learned=True),
]
