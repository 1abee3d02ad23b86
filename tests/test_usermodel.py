"""``--model file.py:factory`` / ``--weights``: each bad input is one clear line, a non-zero exit, and nothing
written (no library, no plan, no run folder, no checkpoint); good ones go through."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from harness.cli import main

GOOD = '''
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.c = nn.Conv2d(in_channels, 6, 3, 1, 1, groups=1)
        self.bn = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, 2, 1, groups=6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = F.relu6(self.bn(self.c(x)))
        x = F.relu6(self.dw(x)) + F.max_pool2d(x, 3, 2, 1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def net(in_channels, num_classes):
    return Net(in_channels, num_classes)


def bare():
    return Net(1, 10)


def raises():
    raise RuntimeError("no GPU here")


def not_a_module():
    return 42


def five_classes():
    return Net(1, 5)


def wrong_input():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def attention():
    class A(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            f = x.flatten(2)
            return self.fc((f.transpose(1, 2) @ f).flatten(1)[:, :64])
    return A()
'''

COMMON = ["--dataset", "digits", "--epochs", "1", "--eps", "0.1"]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "mymodel.py"
    model.write_text(GOOD)
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodel_for_test", model)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sd = mod.net(1, 10).state_dict()
    out = {"model": model}
    torch.save(sd, out.setdefault("weights", tmp_path / "w.pt"))
    torch.save({k: v for k, v in sd.items() if not k.startswith("fc.")}, out.setdefault("missing", tmp_path / "m.pt"))
    torch.save({**sd, "fc.weight": torch.zeros(10, 7)}, out.setdefault("shape", tmp_path / "s.pt"))
    bad = dict(sd)
    bad["c.weight"] = sd["c.weight"].clone()
    bad["c.weight"][0, 0, 0, 0] = float("nan")
    torch.save(bad, out.setdefault("nan", tmp_path / "n.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    out["junk"] = tmp_path / "junk.pt"
    return out


def _nothing_written(tmp_path: Path, cache: Path) -> None:
    assert not (tmp_path / "lib.so").exists() and not (tmp_path / "plan.json").exists()
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    assert not list(cache.glob("checkpoints/*mymodel*")), "no model may be trained for a bad input"


CASES = [
    ("missing_file", lambda f: ["--model", str(f["model"].parent / "nope.py") + ":net"], "not found"),
    ("no_spec", lambda f: ["--model", str(f["model"])], "path/to/file.py:factory"),
    ("missing_factory", lambda f: ["--model", f"{f['model']}:nothere"], "no function 'nothere'"),
    ("factory_raises", lambda f: ["--model", f"{f['model']}:raises"], "factory raised RuntimeError: no GPU here"),
    ("not_a_module", lambda f: ["--model", f"{f['model']}:not_a_module"], "not an nn.Module"),
    ("wrong_classes", lambda f: ["--model", f"{f['model']}:five_classes"], "expected [N, classes] = [2, 10]"),
    ("wrong_input", lambda f: ["--model", f"{f['model']}:wrong_input"], "rejects the data set's input shape"),
    ("unsupported_op", lambda f: ["--model", f"{f['model']}:attention"], "mymodel.py:"),
    ("weights_missing_names", lambda f: ["--model", f"{f['model']}:net", "--weights", str(f["missing"])],
     "names do not match"),
    ("weights_wrong_shape", lambda f: ["--model", f"{f['model']}:net", "--weights", str(f["shape"])],
     "shapes do not match"),
    ("weights_nan", lambda f: ["--model", f"{f['model']}:net", "--weights", str(f["nan"])], "NaN or infinite"),
    ("weights_junk", lambda f: ["--model", f"{f['model']}:net", "--weights", str(f["junk"])], "not a loadable"),
    ("weights_no_file", lambda f: ["--model", f"{f['model']}:net", "--weights", "absent.pt"], "file not found"),
    ("weights_without_model", lambda f: ["--arch", "tinycnn", "--weights", str(f["weights"])], "--weights needs"),
    ("model_and_arch", lambda f: ["--model", f"{f['model']}:net", "--arch", "tinycnn"], "exclude each other"),
]


# every case through `compile`; the commands share the checks, so bench and search get a few
SHARED = ("missing_factory", "weights_nan", "unsupported_op", "wrong_classes")
RUNS = [("compile", c) for c in CASES] + [(cmd, c) for cmd in ("bench", "search") for c in CASES if c[0] in SHARED]


@pytest.mark.parametrize(("command", "case"), RUNS, ids=[f"{cmd}-{c[0]}" for cmd, c in RUNS])
def test_bad_model_input_one_line(files, tmp_path, command: str, case) -> None:
    _, args, needle = case
    cache = Path(os.environ["LAAQ_CACHE"])
    extra = {"compile": ["--target", "x86", "--out", str(tmp_path / "lib.so")],
             "bench": ["--target", "x86", "--variants", "int8", "--results-dir", str(tmp_path / "results"), "--quiet"],
             "search": ["--out", str(tmp_path / "plan.json")]}[command]
    r = CliRunner().invoke(main, [command, *COMMON, *args(files), *extra])
    assert r.exit_code != 0
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert needle in lines[0], lines[0]
    _nothing_written(tmp_path, cache)


def test_given_weights_are_used_as_they_are(files, tmp_path) -> None:
    """--weights: no training; the plan covers the imported graph's layers, named after the modules."""
    import json

    args = ["--model", f"{files['model']}:net", "--weights", str(files["weights"])]
    r = CliRunner().invoke(main, ["train", *COMMON, *args])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"loaded {files['weights']}")
    r = CliRunner().invoke(main, ["quantize", *COMMON, *args, "--bits", "6", "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    assert set(json.loads((tmp_path / "p.json").read_text())["layers"]) == {"c", "dw", "fc"}


def test_factory_without_parameters_and_checkpoint_key(files, tmp_path) -> None:
    """A bare factory is called bare; training caches under a key with the file's digest: edit the file, retrain."""
    cache = Path(os.environ["LAAQ_CACHE"])

    def train() -> str:
        r = CliRunner().invoke(main, ["train", *COMMON, "--model", f"{files['model']}:bare"])
        assert r.exit_code == 0, r.output
        return re.search(r"(trained|loaded) \S+\.pt", r.output).group(1)

    assert train() == "trained" and len(list(cache.glob("checkpoints/*mymodel.bare*"))) == 1
    assert train() == "loaded"
    files["model"].write_text(GOOD + "\n# edited\n")
    assert train() == "trained" and len(list(cache.glob("checkpoints/*mymodel.bare*"))) == 2
