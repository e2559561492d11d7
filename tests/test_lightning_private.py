"""Guards for the private Lightning API lit_seq2seq relies on: one test per name, failing loudly when it changes.

Lightning does not keep its underscore names (and the loop internals, whose classes are private) stable across
minor versions. Each test here checks one of them the way lit_seq2seq uses it: that it exists, takes the
arguments we pass and, where cheap, behaves as we assume, in one tiny fit (BoringModel, two batches) and one
LightningCLI parse. A failure names the Lightning version, what went away, which lit_seq2seq
code needs it and what to do: keep lightning pinned (2.6.* in pyproject.toml, 2.6.6 in constraints.txt) or
port that code. When the code stops using a name, delete its test.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import lightning
import pytest
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel

PIN = "pin lightning==2.6.* (pyproject.toml; constraints.txt has 2.6.6)"


def gone(what: str, user: str, port: str) -> str:
    return f"Lightning {lightning.__version__} no longer has {what}, which {user} relies on; {PIN} or port it: {port}"


def read(get: Callable[[], Any]) -> Any:
    """get(), or the exception it raised: probes record what they found, the tests judge it."""
    try:
        return get()
    except Exception as error:  # noqa: BLE001 - whatever a changed Lightning raises is the finding
        return error


def parameter_names(owner: type, name: str) -> list[str] | None:
    """The parameters of owner.name after self, or None if there is no such method."""
    method = getattr(owner, name, None)
    return None if not callable(method) else list(inspect.signature(method).parameters)[1:]


# --- ModelCheckpoint internals: lit_seq2seq.checkpoint.Seq2SeqCheckpoint -------------------------------------------

CHECKPOINT = "lit_seq2seq.checkpoint.Seq2SeqCheckpoint"

# (name, parameters after self, what breaks, how to port it)
CHECKPOINT_METHODS = [
    (
        "_save_last_checkpoint",
        ["trainer", "monitor_candidates"],
        f"{CHECKPOINT}._write_last (last.ckpt after each validation, epoch end and every_n_train_steps)",
        "write last.ckpt with trainer.save_checkpoint and keep last_model_path up to date",
    ),
    (
        "_save_topk_checkpoint",
        ["trainer", "monitor_candidates"],
        f"{CHECKPOINT}._top_k (best.ckpt right after each validation)",
        "score the monitored metric against best_k_models and write best.ckpt with trainer.save_checkpoint",
    ),
    (
        "_monitor_candidates",
        ["trainer"],
        f"{CHECKPOINT}._write_last and ._top_k (the metrics both savers take)",
        "deepcopy(trainer.callback_metrics) plus int tensors 'epoch' and 'step'",
    ),
    (
        "_should_save_on_train_epoch_end",
        ["trainer"],
        f"{CHECKPOINT}.on_validation_end and .on_train_epoch_end (which of the two saves best.ckpt)",
        "decide from the save_on_train_epoch_end argument and trainer.val_check_interval/check_val_every_n_epoch",
    ),
]


@pytest.mark.parametrize(("name", "params", "user", "port"), CHECKPOINT_METHODS, ids=[m[0] for m in CHECKPOINT_METHODS])
def test_model_checkpoint_method(name: str, params: list[str], user: str, port: str) -> None:
    found = parameter_names(ModelCheckpoint, name)
    assert found == params, gone(
        f"ModelCheckpoint.{name}({', '.join(params)})" + ("" if found is None else f" (it takes ({', '.join(found)}))"),
        user,
        port,
    )


# (attribute, [(ModelCheckpoint keyword arguments besides monitor/save_last, value expected)], what breaks, port)
CHECKPOINT_ATTRIBUTES = [
    (
        "_every_n_train_steps",
        [({"every_n_train_steps": 2}, 2), ({}, 0), ({"every_n_epochs": 2}, 0)],
        f"{CHECKPOINT}.on_train_batch_end (when a step writes last.ckpt)",
        "record every_n_train_steps in Seq2SeqCheckpoint.__init__ (None means 0)",
    ),
    (
        "_train_time_interval",
        [({"train_time_interval": timedelta(minutes=5)}, timedelta(minutes=5)), ({}, None)],
        f"{CHECKPOINT}._best_last_rules (time-based saving keeps Lightning's rules)",
        "record train_time_interval in Seq2SeqCheckpoint.__init__",
    ),
]


@pytest.mark.parametrize(
    ("name", "cases", "user", "port"), CHECKPOINT_ATTRIBUTES, ids=[a[0] for a in CHECKPOINT_ATTRIBUTES]
)
def test_model_checkpoint_attribute(
    name: str, cases: list[tuple[dict[str, Any], Any]], user: str, port: str, tmp_path: Path
) -> None:
    for kwargs, expected in cases:
        callback = ModelCheckpoint(dirpath=tmp_path, monitor="x", save_last=True, **kwargs)
        assert hasattr(callback, name), gone(f"the ModelCheckpoint attribute {name}", user, port)
        got = getattr(callback, name)
        assert got == expected and type(got) is type(expected), gone(
            f"ModelCheckpoint.{name} == {expected!r} for ModelCheckpoint(**{kwargs!r}) (it is {got!r})", user, port
        )


# --- One tiny fit: loop internals, LightningModule internals, the checkpoint savers at work -------------------------


class ProbeModel(BoringModel):
    """BoringModel that logs a metric and notes what Lightning sets `_current_fx_name` to."""

    def __setattr__(self, name: str, value: Any) -> None:
        # The shape of Seq2SeqModule.__setattr__; object.__getattribute__ works before nn.Module.__init__ too.
        if name == "_current_fx_name":
            object.__getattribute__(self, "__dict__").setdefault("fx_names", []).append(value)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.log("probe", out["loss"])
        return out


class FitProbe(Callback):
    """Records the loop internals at every training batch and runs the checkpoint savers at the epoch end."""

    def __init__(self, dirpath: Path) -> None:
        self.checkpoint = ModelCheckpoint(dirpath=dirpath, filename="best", monitor="probe", save_last=True)
        self.batches: list[dict[str, Any]] = []
        self.epoch_end: dict[str, Any] = {}

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        processed = read(lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        self.batches.append({"batch_idx": i, "processed": processed})

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint, found = self.checkpoint, self.epoch_end
        found["processed"] = read(lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        found["_should_save_on_train_epoch_end"] = read(lambda: checkpoint._should_save_on_train_epoch_end(trainer))
        candidates = found["_monitor_candidates"] = read(lambda: checkpoint._monitor_candidates(trainer))
        if isinstance(candidates, dict):
            found["_save_topk_checkpoint"] = read(lambda: checkpoint._save_topk_checkpoint(trainer, candidates))
            found["_save_last_checkpoint"] = read(lambda: checkpoint._save_last_checkpoint(trainer, candidates))


BATCHES = 2


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProbeModel, FitProbe, Trainer]:
    root = tmp_path_factory.mktemp("fit")
    model, probe = ProbeModel(), FitProbe(root / "checkpoints")
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=BATCHES,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[probe],
    )
    trainer.fit(model)
    return model, probe, trainer


def test_model_checkpoint_methods_at_work(fit: tuple[ProbeModel, FitProbe, Trainer]) -> None:
    """The savers do what Seq2SeqCheckpoint calls them for: best.ckpt for the top-k, last.ckpt for the newest."""
    _, probe, _ = fit
    found, checkpoint = probe.epoch_end, probe.checkpoint
    user = CHECKPOINT
    for name in ("_monitor_candidates", "_save_topk_checkpoint", "_save_last_checkpoint"):
        assert not isinstance(found.get(name), Exception), gone(
            f"a working ModelCheckpoint.{name} (it raised {found.get(name)!r})",
            user,
            "see test_model_checkpoint_method",
        )
    candidates = found["_monitor_candidates"]
    assert {"probe", "epoch", "step"} <= set(candidates), gone(
        "ModelCheckpoint._monitor_candidates returning the logged metrics plus epoch and step "
        f"(got {sorted(candidates)})",
        user,
        "build the candidates from trainer.callback_metrics",
    )
    assert Path(checkpoint.best_model_path).name == "best.ckpt" and Path(checkpoint.best_model_path).is_file(), gone(
        f"ModelCheckpoint._save_topk_checkpoint writing best.ckpt (best_model_path {checkpoint.best_model_path!r})",
        user,
        "write best.ckpt with trainer.save_checkpoint",
    )
    assert Path(checkpoint.last_model_path).name == "last.ckpt" and Path(checkpoint.last_model_path).is_file(), gone(
        f"ModelCheckpoint._save_last_checkpoint writing last.ckpt (last_model_path {checkpoint.last_model_path!r})",
        user,
        "write last.ckpt with trainer.save_checkpoint",
    )
    # No validation at all: Lightning saves at the train epoch end.
    assert found["_should_save_on_train_epoch_end"] is True, gone(
        "ModelCheckpoint._should_save_on_train_epoch_end(trainer) -> True when there is no validation "
        f"(got {found['_should_save_on_train_epoch_end']!r})",
        user,
        "see test_model_checkpoint_method",
    )


def test_batch_progress_current_processed(fit: tuple[ProbeModel, FitProbe, Trainer]) -> None:
    _, probe, _ = fit
    got = [b["processed"] for b in probe.batches] + [probe.epoch_end["processed"]]
    want = [b["batch_idx"] + 1 for b in probe.batches] + [BATCHES]
    assert got == want, gone(
        "trainer.fit_loop.epoch_loop.batch_progress.current.processed, the batches trained on in this epoch "
        f"(got {got} at the batch ends and the epoch end, want {want})",
        "lit_seq2seq.data.Seq2SeqDataModule.state_dict (mid-epoch resume)",
        "count the batches trained on in the data module: no public count exists at checkpoint time (Lightning "
        "prefetches, so the loader's position is ahead)",
    )


def test_lightning_module_current_fx_name(fit: tuple[ProbeModel, FitProbe, Trainer]) -> None:
    model, _, _ = fit
    names = set(vars(model).get("fx_names", []))
    assert "_current_fx_name" in vars(BoringModel()) and "training_step" in names, gone(
        "LightningModule._current_fx_name, set around every hook (it set it to "
        f"{sorted(map(str, names))} during a fit)",
        "lit_seq2seq.module.Seq2SeqModule.__setattr__ (its per-step fast path)",
        "rename the attribute in Seq2SeqModule.__setattr__ to what Lightning now sets",
    )


# --- LightningCLI internals: lit_seq2seq.train_cli.Seq2SeqCLI ------------------------------------------------------

CLI = "lit_seq2seq.train_cli.Seq2SeqCLI"


class ProbeStop(RuntimeError):
    """Raised by the CLI probe's instantiate_trainer once it has looked: nothing needs to train."""


class ProbeCLI(LightningCLI):
    """Overrides the hooks as Seq2SeqCLI does and notes when and how Lightning calls them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[tuple[str, Any]] = []
        super().__init__(*args, **kwargs)

    def parse_arguments(self, *args: Any, **kwargs: Any) -> None:
        super().parse_arguments(*args, **kwargs)
        self.events.append(("parse_arguments", None))

    def _parse_ckpt_path(self) -> None:
        # Seq2SeqCLI replaces Lightning's own entirely (no super()): it reads self.config[subcommand].ckpt_path.
        subcommand = self.config.get("subcommand")
        self.events.append(("_parse_ckpt_path", (subcommand, read(lambda: "ckpt_path" in self.config[subcommand]))))

    def _set_seed(self) -> None:
        # Seq2SeqCLI replaces Lightning's (no super()): seeds without its message, from self.config's seed.
        self.events.append(("_set_seed", read(lambda: self._get(self.config, "seed_everything"))))

    def before_instantiate_classes(self) -> None:
        self.events.append(("before_instantiate_classes", None))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self.events.append(("config_init", read(lambda: self.config_init)))
        raise ProbeStop("probe")


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{event: value} of one `fit` parse, stopped at instantiate_trainer; "escaped": what the CLI raised if not
    ProbeStop, "order": the events in order."""
    root = tmp_path_factory.mktemp("cli")
    args = [
        "fit",
        "--trainer.max_steps=1",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        f"--trainer.default_root_dir={root}",
    ]
    probe = ProbeCLI.__new__(ProbeCLI)  # keeps its events even if __init__ raises; no seeding: no global side effects
    with mock.patch.object(sys, "argv", ["probe"]):  # pytest's own arguments would trip LightningCLI's args warning
        try:
            probe.__init__(BoringModel, args=args, save_config_callback=None, seed_everything_default=False)
        except ProbeStop:
            pass
        except Exception as error:  # noqa: BLE001 - a changed Lightning may fail anywhere; the tests say where
            probe.events.append(("escaped", error))
    events = [name for name, _ in probe.events]
    return {"order": events, **dict(probe.events)}


def test_cli_parse_ckpt_path(cli: dict[str, Any]) -> None:
    order = cli["order"]
    steps = ["parse_arguments", "_parse_ckpt_path", "before_instantiate_classes"]
    in_order = [name for name in order if name in steps] == steps and cli["_parse_ckpt_path"] == ("fit", True)
    assert parameter_names(LightningCLI, "_parse_ckpt_path") == [] and in_order, gone(
        "LightningCLI._parse_ckpt_path(), called from __init__ with self.config parsed (subcommand and its "
        f"ckpt_path) and before before_instantiate_classes (calls seen: {order}; got "
        f"{cli.get('_parse_ckpt_path')!r}; the CLI raised {cli.get('escaped')!r})",
        f"{CLI}._parse_ckpt_path (replaces Lightning's: reads --ckpt_path once, checks it, takes its hyperparameters)",
        "override parse_arguments: super().parse_arguments(parser, args), then the same checks and "
        "self.parser.parse_object({subcommand: {'model': hparams}}, self.config)",
    )


def test_cli_set_seed(cli: dict[str, Any]) -> None:
    order = cli["order"]
    steps = ["parse_arguments", "_set_seed", "before_instantiate_classes"]
    in_order = [name for name in order if name in steps] == steps and cli["_set_seed"] is False
    assert parameter_names(LightningCLI, "_set_seed") == [] and in_order, gone(
        "LightningCLI._set_seed(), called from __init__ after parse_arguments and before before_instantiate_classes, "
        f"with self._get(self.config, 'seed_everything') readable (calls seen: {order}; got "
        f"{cli.get('_set_seed')!r}; the CLI raised {cli.get('escaped')!r})",
        f"{CLI}._set_seed (seeds without Lightning's message, which came before any error of the flags or data)",
        "seed in parse_arguments with seed_everything(seed, workers=True, verbose=False)",
    )


def test_cli_config_init(cli: dict[str, Any]) -> None:
    config_init = cli.get("config_init")
    trainer_config = read(lambda: config_init["fit"]["trainer"])
    assert not isinstance(trainer_config, Exception) and trainer_config.get("max_steps") == 1, gone(
        f"LightningCLI.config_init holding the instantiated config by subcommand at instantiate_trainer (got "
        f"{config_init!r}; the CLI raised {cli.get('escaped')!r})",
        f"{CLI}.instantiate_trainer (adds Seq2SeqCheckpointIO unless --trainer.plugins has a CheckpointIO)",
        "read the trainer plugins from self.config[self.subcommand].trainer and instantiate them",
    )


# --- Fit-loop internals: lit_seq2seq.checkpoint.ExactResumeFitLoop and Seq2SeqCheckpoint._validates_now --------------


def _fit_loop_module() -> Any:
    return importlib.import_module("lightning.pytorch.loops.fit_loop")


LOOP_NAMES = [
    (
        "lightning.pytorch.loops.fit_loop._FitLoop",
        lambda: _fit_loop_module()._FitLoop,
        "lit_seq2seq.checkpoint.ExactResumeFitLoop (subclassed; Seq2SeqCheckpoint.setup swaps the trainer's fit loop "
        "to it, so a checkpoint written at an epoch's end resumes into the next epoch)",
        "re-check whether Lightning still re-enters a finished epoch under max_steps "
        "(tests/test_resume.py::test_lightning_still_restarts_a_finished_epoch_under_max_steps) and drop the swap",
    ),
    (
        "_Loop.restarting as a property with a setter (fset)",
        lambda: importlib.import_module("lightning.pytorch.loops.loop")._Loop.restarting.fset,
        "lit_seq2seq.checkpoint.ExactResumeFitLoop.restarting",
        "override the new way Lightning marks a restored loop as restarting",
    ),
    (
        "_FitLoop._iteration_based_training()",
        lambda: _fit_loop_module()._FitLoop._iteration_based_training,
        "lit_seq2seq.checkpoint.ExactResumeFitLoop.restarting (a max_steps stop mid-epoch keeps Lightning's way)",
        "compare trainer.max_steps with the step count directly",
    ),
    (
        "_TrainingEpochLoop._should_accumulate()",
        lambda: (
            importlib.import_module("lightning.pytorch.loops.training_epoch_loop")._TrainingEpochLoop._should_accumulate
        ),
        "lit_seq2seq.checkpoint.StopOnSigterm.on_train_batch_end (no stop after a batch that only accumulated)",
        "compare the batches since the last optimizer step with trainer.accumulate_grad_batches",
    ),
]


@pytest.mark.parametrize(("what", "get", "user", "port"), LOOP_NAMES, ids=[n[0].split(" ")[0] for n in LOOP_NAMES])
def test_fit_loop_internals(what: str, get: Callable[[], Any], user: str, port: str) -> None:
    found = read(get)
    assert callable(found) and not isinstance(found, Exception), gone(what, user, port)


def test_fit_loop_validation_check_and_data_fetcher(fit: tuple[Any, Any, Trainer]) -> None:
    """Seq2SeqCheckpoint._validates_now asks the epoch loop whether a validation follows this batch."""
    trainer = fit[2]
    check = read(lambda: trainer.fit_loop.epoch_loop._should_check_val_fx)
    fetcher = read(lambda: trainer.fit_loop._data_fetcher)
    params = None if not callable(check) else list(inspect.signature(check).parameters)
    assert params == ["data_fetcher"] and not isinstance(fetcher, Exception), gone(
        "fit_loop.epoch_loop._should_check_val_fx(data_fetcher) and fit_loop._data_fetcher "
        f"(got {params}, {fetcher!r})",
        "lit_seq2seq.checkpoint.Seq2SeqCheckpoint._validates_now (no step save on a batch a validation follows)",
        "decide from val_check_interval and batch_idx directly",
    )


# --- Signal handling: lit_seq2seq.checkpoint.StopOnSigterm.setup (SIGTERM) --------------------------------------------


def test_signal_connector_registers_the_sigterm_notifier_it_holds_then() -> None:
    """StopOnSigterm.setup replaces trainer._signal_connector._sigterm_notifier_fn, which Lightning reads when it
    registers its handlers (after the setup hooks); the handler found before (train_cli.stopped_by_sigterm's) is
    called after it."""
    import signal

    user = "lit_seq2seq.checkpoint.StopOnSigterm (SIGTERM stops every process at one batch, after last.ckpt)"
    port = "register a SIGTERM handler in StopOnSigterm.setup that only sets a flag, calling the earlier handler"
    calls: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: calls.append("earlier"))
    try:
        trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        connector = read(lambda: trainer._signal_connector)
        assert hasattr(connector, "_sigterm_notifier_fn"), gone(
            "Trainer._signal_connector._sigterm_notifier_fn", user, port
        )
        connector._sigterm_notifier_fn = lambda *_: calls.append("ours")
        connector.register_signal_handlers()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        connector.teardown()
        assert calls == ["ours", "earlier"], gone("_SignalConnector.register_signal_handlers reading it", user, port)
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- jsonargparse's print_config: lit_seq2seq.train_cli.Seq2SeqCLI.parse_arguments / _parse_ckpt_path -----------------


def test_jsonargparse_print_config_can_be_held_back_and_printed_later() -> None:
    """validate/test/predict --print_config print the config after --ckpt_path is read (the checkpoint's model and
    text settings): jsonargparse's _ActionPrintConfig.skip_print_config() holds the print back during parsing, and
    print_config_if_requested(parser, cfg) prints it later, then exits."""
    import io

    import jsonargparse
    from jsonargparse._actions import _ActionPrintConfig

    user = "lit_seq2seq.train_cli.Seq2SeqCLI (--print_config of validate/test/predict shows the checkpoint's settings)"
    port = "print the subcommand's config with parser.dump after the read"
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--print_config", action=_ActionPrintConfig)
    with _ActionPrintConfig.skip_print_config():
        config = parser.parse_args(["--print_config"])
    config.size = 7  # what --ckpt_path's read changes
    out = io.StringIO()
    with mock.patch.object(sys, "stdout", out), pytest.raises(SystemExit) as exited:
        _ActionPrintConfig.print_config_if_requested(parser, config)
    assert exited.value.code in (0, None) and out.getvalue() == "size: 7\n", (
        f"jsonargparse {jsonargparse.__version__} changed _ActionPrintConfig, which {user} relies on; pin "
        f"jsonargparse or {port}"
    )
