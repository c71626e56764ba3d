import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import numpy as np
import pytest

from bench.codec import CodecError, ParameterError, UnknownCodecError
from bench.registry import ENTRY_POINT_GROUP, Registry, default_registry, get_codec, with_param
from bench_codecs import BUILTINS

PLUGIN = textwrap.dedent('''
    import numpy as np
    from bench.codec import Codec, Param, Payloads, check_images

    class Invert(Codec):
        """Stores 255 - pixel: a real, if useless, lossless codec."""
        lossless = True
        description = "inverted pixels (test plugin)"
        params = (Param("offset", int, 0, 0, 255),)

        def __init__(self, offset=0):
            self.offset = offset

        def encode(self, images):
            images = check_images(images)
            return Payloads.from_array((255 - images).reshape(len(images), -1))

        def decode(self, payloads):
            rows = Payloads.coerce(payloads).as_array()
            side = int(np.sqrt(rows.shape[1]))
            return (255 - rows).reshape(-1, side, side)
''')


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A real installed distribution (dist-info + module) with three entry points."""
    (tmp_path / "invert_plugin.py").write_text(PLUGIN)
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('libfoo.so not found')\n")
    dist = tmp_path / "bench_test_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-test-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ninvert = invert_plugin:Invert\n"
        "broken = broken_plugin:Codec\njpeg = invert_plugin:Invert\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_canonical_names_sort_params_and_drop_defaults():
    reg = Registry(BUILTINS)
    assert reg.parse("jpeg:quality=75")[0].canonical == "jpeg"
    assert reg.parse("jpeg:optimize=1:quality=50")[0].canonical == "jpeg:optimize=1:quality=50"
    assert reg.parse("jpeg:quality=50:optimize=true")[0].canonical == "jpeg:optimize=1:quality=50"


def test_lists_wildcards_and_duplicates():
    reg = Registry(BUILTINS)
    names = [s.canonical for s in reg.parse("ae*, jpeg,jpeg:quality=75,pca9?")]
    assert names == ["ae50", "ae90", "ae95", "ae99", "jpeg", "pca90", "pca95", "pca99"]


def test_unknown_codec_suggests_close_names():
    reg = Registry(BUILTINS)
    with pytest.raises(UnknownCodecError, match="did you mean jpeg") as err:
        reg.parse("jpg")
    assert "valid: " in str(err.value) and "zlib" in str(err.value)
    with pytest.raises(UnknownCodecError, match="matches no codec"):
        reg.parse("xyz*")


@pytest.mark.parametrize("spec, message", [
    ("jpeg:quality=150", "quality='150'; quality must be an integer from 1 to 100"),
    ("zlib:level=x", "level='x'; level must be an integer from 0 to 9"),
    ("jpeg:speed=3", "unknown parameter 'speed'; valid parameters: quality, optimize"),
    ("jpeg:quality", "not key=value"),
    ("jpeg,,png", "empty codec name"),
])
def test_bad_parameters_name_value_and_valid_range(spec, message):
    with pytest.raises(ParameterError if "=" in message or "key" in message else CodecError,
                       match=message.replace("(", r"\(")):
        Registry(BUILTINS).parse(spec)


def test_sweep_expands_ranges_and_lists():
    reg = Registry(BUILTINS)
    sweep = [s.canonical for s in reg.sweep("jpeg:quality=10..95,webp:quality=20/75")]
    assert sweep[:8] == [f"jpeg:quality={q}" for q in (10, 22, 34, 46, 59, 71, 83, 95)]
    assert sweep[-2:] == ["webp:quality=20", "webp"]  # 75 is webp's default: plain name
    with pytest.raises(ParameterError, match="exactly one"):
        reg.sweep("jpeg:quality=50")


def test_with_param_overrides_epochs_only_where_it_exists():
    reg = Registry(BUILTINS)
    ae, jpeg = reg.parse("ae95,jpeg")
    assert with_param(ae, "epochs", 3).canonical == "ae95:epochs=3"
    assert with_param(jpeg, "epochs", 3) is jpeg


def test_get_codec_builds_from_python():
    codec = get_codec("jpeg:quality=50")
    assert codec.name == "jpeg:quality=50" and codec.lossless is False
    with pytest.raises(CodecError, match="names 2 codecs"):
        get_codec("jpeg,png")
    with pytest.raises(CodecError, match="does not run on 'cuda'"):
        get_codec("png", device="cuda")


def test_entry_point_plugin_works_broken_one_warns_and_clash_is_an_error(plugin_path):
    with pytest.warns(UserWarning, match="claimed twice"):
        reg = Registry(BUILTINS, entry_points(group=ENTRY_POINT_GROUP))
    assert reg.parse("png") and "invert" not in reg._loaded  # plugins are imported when used
    with pytest.warns(UserWarning, match="broken.*libfoo.so not found"):
        assert "broken" not in reg.codecs

    invert = reg.parse("invert")[0].build()
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    assert np.array_equal(invert.decode(invert.encode(images)), images)
    assert reg.codecs["invert"].origin.startswith("plugin invert_plugin:Invert")

    with pytest.raises(UnknownCodecError, match="failed to load"):
        reg.parse("broken")
    with pytest.raises(UnknownCodecError, match="claimed twice: by built-in and by plugin"):
        reg.parse("jpeg")
    assert reg.parse("png")[0].build().lossless  # the others still work


def test_bench_list_shows_plugins_and_does_not_import_torch(plugin_path):
    """Torch-free plugins beside the built-ins: `bench list` imports no PyTorch (the worked
    example plugin, which `make test` installs, imports it: it is left out here)."""
    code = ("import sys; from importlib import metadata; from bench import registry; "
            "eps = [e for e in metadata.entry_points(group='bench.codecs') if e.name != 'linear']; "
            "registry.entry_points = lambda group: eps; "
            "from bench.cli import main; rc = main(['list']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(plugin_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "NO-TORCH" in proc.stdout
    assert "invert " in proc.stdout and "inverted pixels (test plugin)" in proc.stdout
    assert "ae95 " in proc.stdout and "lossless" in proc.stdout
    assert "broken" in proc.stderr and "claimed twice" in proc.stderr


def test_default_registry_has_every_builtin():
    names = default_registry().names()
    for expected in ("raw", "jpeg", "png", "webp", "webp-lossless", "jpegxl", "jpegxl-lossless",
                     "zlib", "lzma", "ae50", "ae99", "pca95", "nvjpeg"):
        assert expected in names
