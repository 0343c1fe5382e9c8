"""The torchvision workaround: import works here, and it does nothing on a normal install."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import clip_backdoor

SHIM = Path(clip_backdoor.__file__).with_name("torchvision_shim.py")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_clip_backdoor_makes_torchvision_and_open_clip_import():
    result = run_python(
        "import clip_backdoor, torch, torchvision, open_clip\n"
        "from torchvision.transforms import Resize\n"
        "print(clip_backdoor._torchvision_shim.state)\n"
        "print('x'.join(map(str, Resize(8)(torch.zeros(3, 16, 16)).shape)))"
    )
    assert result.returncode == 0, result.stderr
    state, shape = result.stdout.split()
    assert state in {"patched", "native"}
    assert shape == "3x8x8"


def test_stub_operators_fail_loudly_when_patched():
    if clip_backdoor._torchvision_shim.state != "patched":
        return  # torchvision's own operators are in place on this machine
    import pytest
    import torch

    with pytest.raises(RuntimeError, match="compiled operators are unavailable"):
        torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


def test_noop_when_torchvision_extension_loads():
    # Load the shim alone (not via the package, which installs it) and pretend the compiled
    # extension loads, as on a normal install: no operator may be defined.
    result = run_python(
        "import importlib.util, torch\n"
        f"spec = importlib.util.spec_from_file_location('shim', {str(SHIM)!r})\n"
        "shim = importlib.util.module_from_spec(spec); spec.loader.exec_module(shim)\n"
        "shim._extension_loads = lambda path: True\n"
        "print(shim.install())\n"
        "try:\n    torch.ops.torchvision.nms\n    print('defined')\n"
        "except (AttributeError, RuntimeError):\n    print('undefined')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["native", "undefined"]


def test_shim_is_one_documented_module():
    spec = importlib.util.find_spec("clip_backdoor.torchvision_shim")
    assert spec is not None
    assert "torchvision::nms" in SHIM.read_text().split('"""')[1]
