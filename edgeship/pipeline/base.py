"""The RunContext every stage works in, and what a stage's work function hands back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.markup import escape

from edgeship.artifacts import Artifact, ArtifactStore, Manifest, ManifestEntry, artifact_id
from edgeship.errors import StorageError, disk_refusal
from edgeship.memory import release_freed_memory
from edgeship.models import user_code_failure
from edgeship.recipe import factories

if TYPE_CHECKING:
    from edgeship.data import Dataset
    from edgeship.recipe import Recipe


@dataclass(frozen=True)
class Made:
    """What a stage's work function hands back: the main file, its kind, and facts about it."""

    main_file: Path
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)


class Occupancy(Protocol):
    """How a run shares its machine: ``timing`` is held while it times (no other work of its kind runs then),
    ``waiting`` while it is blocked on another process's artifact (it gives the machine back). A sweep's trial passes
    its node's lock (``edgeship.sweep.node.NodeLock``); the pipeline knows only these two."""

    def timing(self) -> contextlib.AbstractContextManager[object]: ...

    def waiting(self) -> contextlib.AbstractContextManager[object]: ...


class Alone:
    """A run with the machine to itself: both hooks do nothing."""

    def timing(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def waiting(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()


@dataclass
class RunContext:
    """Shared state of one run: the store, the manifest, the data, the console."""

    recipe: Recipe
    store: ArtifactStore
    manifest: Manifest
    run_dir: Path
    console: Console
    dataset: Dataset
    force: frozenset[str] = frozenset()
    occupancy: Occupancy = field(default_factory=Alone)

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / "manifest.json"

    def save_manifest(self) -> None:
        self.manifest.save(self.manifest_path)

    @staticmethod
    def artifact_id(stage: str, *, config: Mapping[str, Any], parents: Sequence[Artifact],
                    extra_key: Mapping[str, Any] | None = None) -> str:
        """The id ``produce`` gives the output of (stage, config, parents, extra_key)."""
        key = {"config": dict(config), **(extra_key or {})}
        return artifact_id(stage, key, [f"{p.id}:{p.sha256}" for p in parents])

    def produce(self, stage: str, name: str, *, config: Mapping[str, Any], parents: Sequence[Artifact],
                make: Callable[[Path], Made], extra_key: Mapping[str, Any] | None = None) -> Artifact:
        """The artifact for (stage, config, parents): reused from the store when complete, else made now.

        The key holds each parent's id *and* sha256, so a parent rebuilt with different
        content (``--force``) never lets a stale child be reused.
        """
        aid = self.artifact_id(stage, config=config, parents=parents, extra_key=extra_key)

        def waiting() -> contextlib.AbstractContextManager[object]:
            self.console.print(f"[dim]… {stage}: {name}: another run is building it ({aid[:12]}); waiting[/dim]")
            return self.occupancy.waiting()

        with self.store.lock(aid, waiting=waiting):
            damaged = None
            if stage not in self.force:
                found, damaged = self.store.lookup(aid)
                if found is not None:
                    self.manifest.record(stage, name, found, reused=True, config=config, seconds=0.0)
                    self.console.print(f"[dim]↺ {stage}: {name} reused from the store ({aid[:12]})[/dim]")
                    return found
                if damaged is not None:
                    self.console.print(f"[yellow]⚠ {stage}: {name}: the stored copy ({aid[:12]}) is damaged: {escape(damaged)}; "
                                       "rebuilding it[/yellow]", soft_wrap=True)
            started = time.perf_counter()
            try:
                with self.store.staging(aid) as folder:
                    made = make(folder)
                    artifact = self.store.commit(folder, aid=aid, kind=made.kind, stage=stage, main_file=made.main_file,
                                                 parents=[p.id for p in parents], meta=made.meta)
                release_freed_memory()  # what the work freed, so the next stage and its children start from less
            except Exception as exc:
                theirs = user_code_failure(exc, factories(self.recipe), stage=stage)
                if theirs is not None:  # the user's model raised: their code, their traceback (--debug)
                    raise theirs from exc
                refusal = disk_refusal(exc)
                if refusal is None:
                    raise
                raise StorageError(f"{stage} {name}: the disk refused a write ({refusal.strerror}: {refusal.filename or self.store.root}); "
                                   f"free space and rerun: every finished artifact is kept in {self.store.root}") from exc
        seconds = time.perf_counter() - started
        self.manifest.record(stage, name, artifact, reused=False, config=config, seconds=seconds,
                             rebuilt=f"the stored copy was damaged: {damaged}" if damaged else "")
        self.console.print(f"[green]✓[/green] {stage}: {name} ({seconds:.1f} s)")
        return artifact

    def record_problem(self, stage: str, name: str, status: str, reason: str, config: Mapping[str, Any] | None = None) -> None:
        self.manifest.add(ManifestEntry(stage=stage, name=name, status=status, reason=reason, config=dict(config or {})))  # type: ignore[arg-type]
        colour = "yellow" if status == "skipped" else "red"
        self.console.print(f"[{colour}]{'–' if status == 'skipped' else '✗'} {stage}: {name} {status}: {escape(reason)}[/{colour}]",
                           soft_wrap=True)
