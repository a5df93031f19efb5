"""Batch composition over folders laid out like the official TF-ICON ``inputs/`` tree, with metrics and reports.

Layout (docs/algorithm.md §2.1): each sample is one folder ``<root>/.../<prompt>/`` holding

- ``bg*``        the background,
- ``fg*``        the foreground (a file starting with ``fg`` whose name does not contain ``mask``),
- ``fg*mask*``   the foreground's object mask,
- ``mask*``      the user mask on the background (its first contour's bbox is the target box),

as images (png, jpg, ...). Other files (the official folders also hold ``cp_bg_fg.jpg`` and ``dccf_image.jpg``)
are ignored. The prompt is the folder name, with underscores read as spaces. The mode comes from the nearest
``cross_domain`` / ``same_domain`` folder above the sample unless given.

Differences from the official discovery loop, on purpose: any root works (the official regex needs
``./inputs/<x>/<prompt>/``), and a folder with a missing, empty, unreadable or ambiguous input is reported with
the reason and skipped (the official loop silently reuses the previous folder's file).

Output (``out/<sample id>/``): ``result.png``, ``cut_and_paste.png`` (the pixel composite of docs/algorithm.md §2.5),
``overlay.png`` (the working-size background with the user box in yellow, the target window in red and the
object outline in green) and ``sample.json`` (settings, placement, timings, inversion-cache hits, metrics, and the
size and sha256 of each image; written last, so it marks the sample finished). Over all samples: ``summary.csv``,
``summary.json``, ``contact_sheet.png`` and ``report.html``. Every file is written atomically
(``tficon.run.files``), and a sample's old ``sample.json`` is removed before any of its images is rewritten.

Faults: a sample that fails (a non-finite step, any error while composing, a file that cannot be written) is
recorded as failed with a one-line reason and the batch goes on; a record that cannot be written is said once in
the log. Each summary that cannot be written is named in ``BatchReport.unwritten``; the others are still written.
Folders whose names are not valid UTF-8 and symbolic links to folders are reported as skipped samples.

Resuming: a sample whose ``sample.json`` records the same fingerprint (settings, model, working size and the
content of its four input files), and whose images still match the sizes and hashes it records, is not composed
again unless ``force``. Samples that share a background run
one after another, so the background inversion is found in the batch's inversion cache (``tficon.composition.engine``);
``sample.json`` records the hits. Both images of a sample are inverted in one batch, and a result must not depend
on what was cached, so a hit saves UNet work only when both inversions of a sample are cached.

Several processes (Hugging Face ``accelerate``): under ``accelerate launch -m tficon batch ...`` (or
``tficon batch --processes N``, which runs that launcher) every process finds the same samples still to compose,
they agree on that list before anyone writes (a barrier), and ``PartialState.split_between_processes`` gives each
process a contiguous share of it in composition order (so samples sharing a background mostly stay together).
Each process loads the model on its own device and writes its samples exactly as a single process would, with the
same resume rules, so a killed process loses at most the sample it was composing. When all are done, the main
process gathers the outcomes and writes the summaries, contact sheet and report once. A run that was killed
writes no summaries; the re-run composes what is missing and merges everything.

Batched samples (``batch_samples`` / ``--batch-samples N``, off by default): samples share nothing but the model
and the working size, so up to N of them advance together, each step of all of them in one UNet call
(``tficon.composition.runner``); their inversions are batched too, a background shared by several samples inverted once.
Results equal the one-at-a-time results to float tolerance, not bitwise (one at a time is the same runner with one
sample per call). Each sample is still written as soon as it is finished, with the same resume rules; a killed run
loses the samples in flight (up to N).

Modules: :mod:`tficon.run.batch_samples` (discovery, fingerprints, order), :mod:`tficon.run.batch_compose` (one
sample's Session, images, metrics and record), :mod:`tficon.run.batch_summary` (summaries and the visual report);
this module runs them.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from tficon.composition.engine import Engine
from tficon.composition.runner import MAX_ROWS_PER_CELL, check_count, run_tasks
from tficon.core.config import CompositionConfig
from tficon.run.batch_compose import (
    INPUT_ERRORS,
    SampleTask,
    Scorers,
    base_record,
    checked_model,
    compose_sample,
    earlier_outcome,
    open_session,
    placement_overlay,
)
from tficon.run.batch_samples import (  # noqa: F401 - names of the batch, importable from here as before
    ASPECT_TOLERANCE,
    DOMAIN_MODES,
    IMAGE_SUFFIXES,
    OUTPUT_FILES,
    RECORD_FILE,
    ROLES,
    BatchSample,
    check_sample_files,
    composition_order,
    discover_samples,
    fingerprint,
    mode_from_path,
    prompt_from_folder,
    role_of,
)
from tficon.run.batch_summary import (  # noqa: F401 - METRIC_COLUMNS, SUMMARY_FILES: importable from here as before
    METRIC_COLUMNS,
    SUMMARY_FILES,
    BatchReport,
    SampleOutcome,
    write_summaries,
)
from tficon.run.files import WriteError, write_json_atomic

__all__ = [
    "IMAGE_SUFFIXES",
    "ROLES",
    "DOMAIN_MODES",
    "OUTPUT_FILES",
    "RECORD_FILE",
    "BatchSample",
    "SampleOutcome",
    "BatchReport",
    "role_of",
    "prompt_from_folder",
    "mode_from_path",
    "discover_samples",
    "composition_order",
    "check_sample_files",
    "placement_overlay",
    "run_batch",
    "process_state",
]


def process_state():
    """accelerate's ``PartialState`` when this process is one of several started by a launcher (``accelerate
    launch``, torchrun, mpirun), else None. Without a GPU the processes join a CPU (gloo/MPI) group."""
    from accelerate.utils import get_int_from_env

    if get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1) <= 1:
        return None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state if state.num_processes > 1 else None


def run_batch(
    root: str | os.PathLike,
    out: str | os.PathLike,
    model="toy",
    *,
    mode: str = "auto",
    config: CompositionConfig | None = None,
    image_size: int | tuple[int, int] | None = None,
    force: bool = False,
    limit: int | None = None,
    progress: bool = True,
    perceptual: bool = True,
    lpips_weights: str | os.PathLike | None = None,
    clip_model: str | os.PathLike | None = None,
    allow_downloads: bool = False,
    log: Callable[[str], None] | None = None,
    dtype: str | None = None,
    batch_samples: int | str | None = None,
) -> BatchReport:
    """Compose every sample folder under ``root`` into ``out`` (see the module docstring).

    Args:
        model: a ``LoadedModel`` or a ``load_model`` spec; a spec is loaded only when a sample needs composing.
        mode: ``"auto"`` (from the folder names), ``"cross"`` or ``"same"`` for every sample.
        config: settings of every sample (its ``mode`` is replaced by the sample's); default the official ones.
        image_size: working size (default: the model's).
        force: compose finished samples again.
        limit: compose only the first ``limit`` samples (in id order); later ones that an earlier run finished
            with the same settings still appear in the summaries.
        progress: a tqdm bar over the samples.
        perceptual: try LPIPS (VGG) and CLIP; each runs only with local weights unless ``allow_downloads``.
        lpips_weights / clip_model: see ``tficon.eval.metrics.LPIPSScorer.load`` / ``CLIPScorer.load``.
        log: where messages go (default ``tqdm.write``).
        dtype: the precision a model spec is loaded in (``load_model``'s dtype).
        batch_samples: None (default): one sample at a time, each bitwise what ``tficon compose`` gives. N: up to
            N samples advance together, one UNet call per step for all of them (``tficon.composition.runner``;
            results equal to float tolerance); ``"auto"``: as many as the memory budget holds. A killed run then
            loses the samples in flight (up to N), not just one.

    Under a multi-process launch (``process_state``), each process composes its share of the samples still to
    compose, and the main process writes the summaries after all have finished (module docstring).

    Returns:
        a :class:`BatchReport`; summaries and the visual report are written to ``out``. Under several processes
        the main process's report covers every sample; the others' hold only their own samples and no paths.
    """
    root, out = Path(root), Path(out)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if config is not None and not isinstance(config, CompositionConfig):
        raise TypeError(f"config must be a tficon.CompositionConfig or None, got {type(config).__name__}")
    check_count(batch_samples, "batch_samples", auto=True, none=True)
    state = process_state()
    log = _process_log(log or tqdm.write, state)
    discovered = discover_samples(root, mode, exclude=[out])
    samples = discovered[:limit] if limit is not None else discovered
    batch = _Batch(
        out, config or CompositionConfig(), model, image_size, force=force, dtype=dtype, log=log, state=state,
        scorers=Scorers(perceptual, lpips_weights, clip_model, allow_downloads, log),
    )  # fmt: skip
    batch.compose_all(batch.share(composition_order(samples)), batch_samples, progress)
    if state is not None:
        main_process = batch.gather(samples)
        # The last collective is done: leave the group now rather than in the interpreter's teardown, where a
        # process that ends while another still writes summaries could abort.
        state.destroy_process_group()
        if not main_process:
            return BatchReport(root, out, list(batch.outcomes.values()), {}, dict(batch.scorers.unavailable))
    # Samples beyond --limit that an earlier run finished with these settings stay in the summaries.
    batch.add_earlier(discovered[len(samples) :])
    ordered = [batch.outcomes[s.id] for s in discovered if s.id in batch.outcomes]
    report = BatchReport(root, out, ordered, {}, dict(batch.scorers.unavailable))
    report.paths = write_summaries(report, batch.base, batch.model_spec, image_size, mode)
    return report


def _one_line(error: BaseException) -> str:
    """``Type: message`` on one line (a message's own line breaks become spaces)."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _process_log(log: Callable[[str], None], state) -> Callable[[str], None]:
    """``log``, its messages prefixed with the process's rank under a multi-process launch."""
    if state is None:
        return log
    rank = f"[process {state.process_index + 1}/{state.num_processes}] "
    return lambda message: log(rank + message)


def _model_spec(model) -> str:
    spec = model if isinstance(model, (str, os.PathLike)) else getattr(model, "spec", type(model).__name__)
    return os.fspath(spec) if isinstance(spec, os.PathLike) else spec


class _Batch:
    """One batch run: its settings, the model and engine (loaded when first needed; one inversion cache for the
    whole batch), and the outcomes so far."""

    def __init__(self, out: Path, base: CompositionConfig, model, image_size, *, force, dtype, log, state, scorers):
        self.out, self.base, self.image_size = out, base, image_size
        self.force, self.dtype, self.log, self.state, self.scorers = force, dtype, log, state, scorers
        self.model_spec = _model_spec(model)
        self.loaded = None if isinstance(model, (str, os.PathLike)) else checked_model(model, image_size)
        self.engine = None
        self.outcomes: dict[str, SampleOutcome] = {}
        self.bar = None

    def fingerprint(self, sample: BatchSample) -> str:
        return fingerprint(sample, self.base.replace(mode=sample.mode), self.model_spec, self.image_size)

    def earlier(self, sample: BatchSample) -> SampleOutcome | None:
        return earlier_outcome(sample, self.fingerprint(sample), self.out / sample.id)

    # ------------------------------------------------------------------ composing
    def share(self, work: list[BatchSample]) -> list[BatchSample]:
        """This process's share of ``work`` (all of it in a single process)."""
        if self.state is None:
            return work
        # Every process reads the same finished records and must agree on what is left before anyone writes one.
        work = [s for s in work if self.force or self.earlier(s) is None]
        self.state.wait_for_everyone()
        with self.state.split_between_processes(work) as share:
            return list(share)

    def compose_all(self, work: list[BatchSample], batch_samples, progress: bool) -> None:
        """Compose ``work`` through the runner: one sample per UNet call, or up to ``batch_samples`` together."""
        state = self.state
        desc = "tficon batch" if state is None else f"tficon batch {state.process_index + 1}/{state.num_processes}"
        position = None if state is None else state.process_index
        self.bar = tqdm(total=len(work), desc=desc, unit="sample", disable=not progress, position=position)
        if batch_samples is None:
            rows, cells = MAX_ROWS_PER_CELL, 1
        elif batch_samples == "auto":
            rows, cells = "auto", None
        else:
            rows, cells = MAX_ROWS_PER_CELL * batch_samples, batch_samples
        stats = run_tasks(
            self.tasks(work), max_rows=rows, max_cells=cells,
            on_finished=lambda task: self.composed(task, batch_samples),
            on_error=lambda task, error: self.failed(task.sample, task.folder, task.record, error),
        )  # fmt: skip
        if batch_samples is not None and stats.unet_calls:
            self.log(f"batched samples: up to {stats.max_cells} per UNet call, {stats.rows_per_call:.1f} rows per call")
        self.bar.close()

    def tasks(self, work: list[BatchSample]):
        """The samples to compose as tasks, in order, each opened when the runner has room for it; the others
        (finished earlier, bad input) are settled on the way."""
        for run_index, sample in enumerate(work):
            self.bar.set_postfix_str(sample.id[-40:], refresh=False)
            task = self.open(run_index, sample)
            if task is not None:
                task.joined = time.perf_counter()
                yield task

    def open(self, run_index: int, sample: BatchSample) -> SampleTask | None:
        """The sample's task, or None when it is settled already (finished earlier, or bad input)."""
        folder = self.out / sample.id
        config = self.base.replace(mode=sample.mode)
        mark = self.fingerprint(sample)
        earlier = None if self.force else earlier_outcome(sample, mark, folder)
        if earlier is not None:
            self.outcomes[sample.id] = earlier
            self.bar.update(1)
            if earlier.action == "skipped":
                self.log(f"skipped {sample.id}: {earlier.reason} (recorded earlier)")
            return None
        record = base_record(sample, mark) | {"run_index": run_index}
        try:
            check_sample_files(sample, self.image_size)
            problem = None
        except INPUT_ERRORS as error:
            problem = str(error)
        if problem is None:
            self.load_model()
            started = time.perf_counter()
            try:
                if self.engine is None or self.engine.model is not self.loaded:
                    self.engine = Engine(self.loaded)
                session = open_session(sample, self.engine, config, self.image_size)
            except INPUT_ERRORS as error:
                problem = str(error)
            except Exception as error:  # noqa: BLE001 - anything else fails this sample only
                self.failed(sample, folder, record, error)
                return None
        if problem is not None:
            record.update(status="skipped", reason=problem)
            self.log(f"skipped {sample.id}: {problem}")
            self.write_record(sample, folder, record)
            self.keep(sample, record, "skipped")
            return None
        prepare = time.perf_counter() - started
        return SampleTask(session=session, sample=sample, record=record, folder=folder, prepare_seconds=prepare)

    def load_model(self) -> None:
        """Load the model if needed: only now, so that a batch with nothing to compose never loads it. A model that
        cannot load, or a working size it cannot use, ends the batch (no sample could run)."""
        if self.loaded is None:
            from tficon.model import load_model

            device = None if self.state is None else self.state.device
            self.loaded = checked_model(load_model(self.model_spec, device=device, dtype=self.dtype), self.image_size)
            self.log(f"model: {self.loaded.describe()}")

    def keep(self, sample: BatchSample, record: dict, action: str) -> None:
        """Keep the sample's outcome for the summaries (also when its record could not be written)."""
        self.outcomes[sample.id] = SampleOutcome(sample.id, action, record.get("reason"), record)
        self.bar.update(1)

    def write_record(self, sample: BatchSample, folder: Path, record: dict, *, required: bool = False) -> None:
        """Write the sample's record atomically (last: a "composed" one marks the sample finished). A record that
        cannot be written is said once, in one line, and the batch goes on; ``required``: raise instead."""
        from tficon.run.report import jsonable

        try:
            write_json_atomic(folder / RECORD_FILE, jsonable(record))
        except Exception as error:  # noqa: BLE001 - a full disk or a read-only folder must not end the batch
            if required:
                raise
            self.log(f"could not write the record of {sample.id} ({_one_line(error)}); a re-run tries it again")

    def composed(self, task: SampleTask, batched) -> None:
        """The runner finished the task's Session: write its outputs and record (a failure there fails the sample)."""
        try:
            task.record.update(compose_sample(task, self.scorers, batched))
            task.record.update(status="composed", reason=None)
            self.write_record(task.sample, task.folder, task.record, required=True)
        except Exception as error:  # noqa: BLE001 - one sample's failure must not end the batch
            self.failed(task.sample, task.folder, task.record, error)
            return
        self.keep(task.sample, task.record, "composed")

    def failed(self, sample: BatchSample, folder: Path, record: dict, error: BaseException) -> None:
        """The sample failed (composing, a NaN, writing its files): record why, in one line, and go on.
        ``failure`` is ``"write"`` for an output that could not be written (the CLI's exit code 3), else ``"run"``."""
        reason = _one_line(error)
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        failure = "write" if isinstance(error, WriteError) else "run"
        record.update(status="failed", reason=reason, failure=failure, traceback=trace)
        self.log(f"FAILED {sample.id}: {reason}")
        self.write_record(sample, folder, record)
        self.keep(sample, record, "failed")

    # ------------------------------------------------------------------ after composing
    def gather(self, samples: list[BatchSample]) -> bool:
        """Several processes: collect every process's outcomes in the main process (collective: returns when every
        process has finished its share). Returns whether this is the main process."""
        from accelerate.utils import gather_object

        mine = list(self.outcomes.values())
        gathered = gather_object([(mine, dict(self.scorers.unavailable))])
        if not self.state.is_main_process:
            return False
        self.outcomes = {o.id: o for theirs, _ in gathered for o in theirs}
        for _, unavailable in gathered:
            self.scorers.unavailable.update(unavailable)
        self.add_earlier([s for s in samples if s.id not in self.outcomes])  # finished by earlier runs: no one's share
        return True

    def add_earlier(self, samples: list[BatchSample]) -> None:
        """The outcomes earlier runs recorded for ``samples`` with these settings."""
        for sample in samples:
            earlier = self.earlier(sample)
            if earlier is not None:
                self.outcomes[sample.id] = earlier
