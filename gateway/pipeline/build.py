"""Building the pipeline's stages from the configuration, once, at startup.

Every FQL condition is parsed and every schema checked here, so a mistake is a startup error
(``eventgate check`` reports it with the key path and position), never a per-event surprise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pluggy

from gateway.config import DestinationConfig, GatewayConfig
from gateway.destination import Destination
from gateway.errors import ConfigError
from gateway.pipeline.destination_stage import DestinationStage
from gateway.pipeline.filters import DestinationFilters
from gateway.pipeline.protocols import TrackingPlan
from gateway.pipeline.source_stage import SourceStage
from gateway.pipeline.transforms import Transform, TransformationConfig, Transformations
from gateway.plugins import destination_types, transforms

__all__ = ["destination_stage", "pipeline_problems", "source_stages"]


def source_stages(
    config: GatewayConfig,
    plugin_manager: pluggy.PluginManager,
    suppressed: Callable[[], frozenset[str]],
) -> dict[str, SourceStage]:
    """Every source's stage; ``suppressed`` returns the user ids suppressed right now."""
    named = transforms(plugin_manager)
    plans = {p.name: TrackingPlan.compile(p) for p in config.tracking_plans}
    return {
        source.name: SourceStage(
            source.name,
            suppressed=suppressed,
            plan=plans[source.tracking_plan] if source.tracking_plan else None,
            options=source.protocols,
            transformations=_transformations(source.transformations, named),
        )
        for source in config.sources
    }


def destination_stage(
    dest: DestinationConfig,
    cls: type[Destination[Any]],
    named: Mapping[str, Transform],
    suppressed: Callable[[], frozenset[str]] = frozenset,
) -> DestinationStage:
    """The stage of destination ``dest`` (of type ``cls``); see :class:`DestinationStage`."""
    return DestinationStage(
        dest.name,
        display_name=cls.display_name,
        kind=cls.integration_kind,
        filters=DestinationFilters.compile(dest.filters) if dest.filters else None,
        transformations=_transformations(dest.transformations, named),
        suppressed=suppressed,
    )


def pipeline_problems(
    config: GatewayConfig, plugin_manager: pluggy.PluginManager, file: str
) -> list[str]:
    """Every problem building the stages would raise, each with the file and key path."""
    problems: list[str] = []
    named = transforms(plugin_manager)
    for i, plan in enumerate(config.tracking_plans):
        where = f"{file}: tracking_plans[{i}]"
        _collect(problems, where, functools.partial(TrackingPlan.compile, plan))
    for i, source in enumerate(config.sources):
        where = f"{file}: sources[{i}].transformations"
        _collect(
            problems, where, functools.partial(_transformations, source.transformations, named)
        )
    types = destination_types(plugin_manager)
    for i, dest in enumerate(config.destinations):
        if dest.type in types:
            build = functools.partial(destination_stage, dest, types[dest.type].cls, named)
            _collect(problems, f"{file}: destinations[{i}]", build)
    return problems


def _transformations(
    configs: Sequence[TransformationConfig], named: Mapping[str, Transform]
) -> Transformations | None:
    return Transformations.compile(configs, named) if configs else None


def _collect(problems: list[str], where: str, build: Callable[[], object]) -> None:
    try:
        build()
    except ConfigError as exc:
        problems.extend(f"{where}: {problem}" for problem in exc.problems)
