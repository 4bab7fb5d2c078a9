import os

# Kernel outputs allocated with torch.empty are NaN-filled so that an element a kernel forgets is caught.
os.environ.setdefault("FASTPRM_NAN_FILL_OUTPUTS", "1")
# Triton kernels run in the interpreter (no GPU here). Set before anything can import triton: transformers,
# accelerate or torch.compile may import it long before the Triton tests run.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Scorers use the fixed plan (no per-machine calibration), so a test's layout does not depend on the machine;
# the tuning tests turn calibration on themselves, with their own cache folder.
os.environ.setdefault("FASTPRM_TUNE", "off")

import pytest

from fastprm import _native


@pytest.fixture(params=_native.available_isas() or ["reference"])
def cpu_isa(request):
    """Runs a test once per CPU code path the test machine supports (the reference when no extension)."""
    if _native.native is None:
        yield "reference"
        return
    before = _native.native.selected_isa()
    _native.native.set_isa(request.param)
    yield request.param
    _native.native.set_isa(before)


@pytest.fixture(scope="session")
def qwen_prm_dir(tmp_path_factory):
    """A tiny random checkpoint in the Qwen2.5-Math-PRM on-disk format, shared read-only by the tests."""
    import checkpoints

    path = tmp_path_factory.mktemp("qwen_prm")
    checkpoints.write_qwen25_math_prm(path)
    return path
