"""Shared fixtures: a local HTTP server (download tests never touch the internet), the tiny data set,
the tiny trained models, labelme's example annotations, and the stand-in ``google.colab``."""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import pytest

from colab_stand_in import FAKE_COLAB, notebook_shell
from http_helpers import local_server
from labelme_examples import examples_or_fail


@pytest.fixture
def http_server():
    """A :class:`~http_helpers.LocalServer` on 127.0.0.1 (a free port), shut down after the test."""
    with local_server() as server:
        yield server


@pytest.fixture(scope="session")
def labelme_examples():
    """labelme's own example folders (``instance_segmentation/``, ``bbox_detection/``), fetched once into
    the user's cache (see tests/labelme_examples.py); without them the test fails with one line naming the fix."""
    return examples_or_fail()


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A small synthetic dataset converted to COCO: ``{"train": json, "val": json}``."""
    from maskrcnn_finetune.data.convert import convert_labelme
    from maskrcnn_finetune.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("tiny")
    make_synthetic(root / "labelme", 8, seed=3, image_size=(96, 80))
    result = convert_labelme(root / "labelme", root / "coco", val_fraction=0.25, seed=0)
    return result.json_paths


@pytest.fixture(scope="session")
def tiny_model(tiny_coco, tmp_path_factory):
    """Trained tiny model folders, one training per set of options: ``tiny_model(backbone, **overrides)``.

    For tests that need *a* trained model, not the training itself. ``overrides`` are training options
    that replace the defaults (``training_options.TINY_MODEL``, 3 iterations, at most 20 detections);
    every test asking for the same options gets the same folder, so copy it before changing it.
    """
    from training_options import train_tiny

    folders = {}

    def make(backbone: str = "mobilenetv2_fpnlite", **overrides):
        options = {"max_iter": 3, "detections_per_image": 20, **overrides}
        key = (backbone, tuple(sorted((name, repr(value)) for name, value in options.items())))
        if key not in folders:
            out = tmp_path_factory.mktemp(f"tiny_{backbone}") / "m"
            folders[key] = train_tiny(tiny_coco["train"], out, backbone, **options)
        return folders[key]

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model):
    """A model folder from a 3-iteration training of the tiny MobileNetV2-FPN-lite (at most 20 detections)."""
    return tiny_model()


def _import_detectron2_quietly() -> None:
    """detectron2 and fvcore call ``torch.jit.script`` while they are imported, and torch attributes that
    deprecation warning to itself, so pyproject's rule (any torch.jit deprecation fails a test) cannot tell
    their calls from the kit's. Importing them once here, with that warning ignored, keeps the rule for the
    kit's own calls; the import happens once per process, so later imports raise nothing. The make test
    environment always has detectron2; without it there is nothing to import."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch\\.jit\\.", category=FutureWarning)
            for name in ("fvcore.nn", "detectron2.checkpoint", "detectron2.config", "detectron2.data",
                         "detectron2.engine", "detectron2.layers", "detectron2.modeling", "detectron2.model_zoo",
                         "detectron2.solver", "detectron2.structures", "detectron2.utils.events"):
                importlib.import_module(name)
    except ImportError:
        pass


_import_detectron2_quietly()


@pytest.fixture(autouse=True, scope="session")
def _no_benchmark_make_target():
    """The benchmark scripts name the make target that ran them (RESULTS_MD_MAKE_TARGET, set by the Makefile's
    bench targets); the tests check the command lines they write, whatever target started the run."""
    old = os.environ.pop("RESULTS_MD_MAKE_TARGET", None)
    yield
    if old is not None:
        os.environ["RESULTS_MD_MAKE_TARGET"] = old


@pytest.fixture(autouse=True, scope="session")
def _own_server_registry(tmp_path_factory):
    """Servers started by the tests are remembered in a folder of this run only, never the machine's own
    (start_server stops the servers it finds there; notebook runs inherit the variable)."""
    from rest_api_flask.registry import REGISTRY_ENV

    old = os.environ.get(REGISTRY_ENV)
    os.environ[REGISTRY_ENV] = str(tmp_path_factory.mktemp("server_registry"))
    yield
    if old is None:
        os.environ.pop(REGISTRY_ENV, None)
    else:
        os.environ[REGISTRY_ENV] = old


@pytest.fixture(autouse=True, scope="session")
def _torch_runtime_by_default(tmp_path_factory):
    """The servers and batch predictions the tests start run torch unless a test asks for another runtime
    (``MRCNN_RUNTIME``; processes inherit it): their answers are compared with the Predictor's, and the
    default ``auto`` may choose OpenVINO by timing. tests/test_runtimes.py tests the default itself. Runtime
    decisions are not cached (``MRCNN_RUNTIME_CACHE=0``: the session's model folders are shared, and a decision
    cached by one test would answer another's question); tests/test_runtime_cache.py turns the cache on, and a
    read-only model folder's decisions go into a folder of this run (``MRCNN_CACHE_DIR``)."""
    from maskrcnn_finetune.devices import RUNTIME_ENV
    from maskrcnn_finetune.runtime_cache import CACHE_ENV, CACHE_ROOT_ENV

    old = {name: os.environ.get(name) for name in (RUNTIME_ENV, CACHE_ENV, CACHE_ROOT_ENV)}
    os.environ[RUNTIME_ENV] = "torch"
    os.environ[CACHE_ENV] = "0"
    os.environ[CACHE_ROOT_ENV] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def fake_colab(monkeypatch, tmp_path):
    """The stand-in ``google.colab`` of tests/fake_colab (mocked: it only exists inside Colab), importable.

    It behaves as colabtools does today (see tests/fake_colab/README.md); what the browser does is
    set with ``FAKE_COLAB_*`` variables. Drive is a temporary folder mounted at ``tmp_path/content/drive``.
    The test runs as the notebook's kernel (``IPython.get_ipython()`` has a ``.kernel``); a test that
    stands for a process the notebook started sets ``IPython.get_ipython`` back to return None.
    """
    import IPython

    monkeypatch.syspath_prepend(str(FAKE_COLAB))
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    for var in ("FAKE_COLAB_UPLOAD", "FAKE_COLAB_SECRETS", "FAKE_COLAB_BROWSER", "FAKE_COLAB_DOWNLOADS",
                "FAKE_COLAB_CALLS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FAKE_COLAB_DRIVE", str(tmp_path / "google_drive"))
    from maskrcnn_finetune import handover

    monkeypatch.setattr(handover, "DRIVE_ROOT", tmp_path / "content" / "drive")
    shell = notebook_shell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    import google.colab  # noqa: F401 - as Colab's kernel has it imported

    yield tmp_path
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def cloudflared_site(tmp_path_factory):
    """A folder holding a copy of pycloudflared whose cloudflared program is the stand-in of
    tests/cloudflared_stand_in.py (mocked: TryCloudflare cannot be reached, nor the program downloaded)."""
    import cloudflared_stand_in

    return cloudflared_stand_in.install(tmp_path_factory.mktemp("cloudflared"))


@pytest.fixture
def fake_cloudflared(cloudflared_site, monkeypatch, tmp_path):
    """This process and the processes it starts find the stand-in cloudflared (mode ``ok``; set
    ``FAKE_CLOUDFLARED`` to change it); returns the file where the stand-in notes what it did."""
    import cloudflared_stand_in

    log = tmp_path / "cloudflared.log"
    for name, value in cloudflared_stand_in.environment(cloudflared_site, log).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(cloudflared_site))
    for name in [m for m in sys.modules if m == "pycloudflared" or m.startswith("pycloudflared.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    yield log
    for name in [m for m in sys.modules if m == "pycloudflared" or m.startswith("pycloudflared.")]:
        sys.modules.pop(name, None)
