"""The check of a bundle with preprocessing: four comparisons in one pass over its reference set.

* ``pipeline``: the merged graph (what serving runs) on the raw inputs vs the research outputs;
* ``preprocess``: ``preprocess.onnx`` on the raw inputs vs the reference features, per raw input;
* ``model``: ``model.onnx`` on the reference features vs the research outputs;
* ``merge``: the merged graph vs ``model.onnx`` run on ``preprocess.onnx``'s outputs, i.e. the
  proof that the merged graph computes what the two stages compute in sequence.

Each is a :class:`~.engine.Comparison` for the one loop; which stage failed is then
turned into a sentence by :func:`paritybundle.parity.localise.diagnose`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..bundle.manifest import Tolerance
from ..errors import BundleInvalid
from ..parity.accumulator import OutputAccumulator
from ..parity.judge import export_baselines, judge_for
from ..parity.localise import StageResult, column_accumulators, spanning_columns
from ..parity.results import OutputComparison
from ..runtime.load import ServingRuntime, stage_runner
from .engine import Comparison, Judge, Part, Run, Target
from .sources import BundleReferences
from .targets import RunnerTarget


class StagedCheck:
    """The four comparisons of a bundle with preprocessing, and their results once the loop ran.

    Args:
        runtime: the loaded bundle (its pipeline runner is ``serve``'s).
        serve: the pipeline target (what serving runs).
        source: the bundle's reference set with its features.
        batch_size: samples per ONNX Runtime call for the two stage graphs.
        overrides: check-time tolerance overrides of the outputs.
        tolerance: a check-time tolerance for every output, also applied to the features.
    """

    def __init__(
        self,
        runtime: ServingRuntime,
        serve: Target,
        source: BundleReferences,
        batch_size: int | None,
        overrides: Mapping[str, Tolerance],
        tolerance: Tolerance | None,
        histograms: bool,
    ) -> None:
        bundle, manifest = runtime.bundle, runtime.manifest
        pre_info, files = manifest.preprocessing, manifest.stages
        assert pre_info is not None and files.preprocess is not None, "a bundle with preprocessing"
        self.files = files
        self.preprocess_file: str = files.preprocess
        self.features = list(pre_info.features)
        policy = manifest.tolerance
        feature_tolerance = tolerance or policy.default

        def stage(file: str, inputs, outputs) -> RunnerTarget:
            return RunnerTarget(
                stage_runner(bundle, file, inputs, outputs, runtime.settings),
                batch_size,
                refuse=lambda exc: BundleInvalid(
                    f"the reference set does not match {file}'s inputs: {str(exc).rstrip('.')}; re-export the bundle."
                ),
            )

        preprocess = stage(files.preprocess, manifest.inputs, self.features)
        model = stage(files.model, self.features, manifest.outputs)
        baselines = export_baselines(manifest)

        def judged() -> dict[str, OutputAccumulator]:
            return {
                s.name: judge_for(
                    s,
                    policy,
                    source.total_elements("outputs", s.name),
                    overrides=overrides,
                    baselines=baselines,
                    histogram=histograms,
                )
                for s in manifest.outputs
            }

        self.pipeline, self.model = judged(), judged()
        self.merge = {
            s.name: OutputAccumulator(s.name, policy.for_output(s.name), source.total_elements("outputs", s.name))
            for s in manifest.outputs
        }
        self.columns = column_accumulators(pre_info, feature_tolerance, source.rows)
        # A raw input that alone makes a whole feature array (a Pipeline's image, say) already compares
        # all of it: that feature's result is derived from its column instead of computed twice.
        self.spanning = spanning_columns(self.columns)
        self.pre = {
            s.name: OutputAccumulator(s.name, feature_tolerance, source.total_elements("features", s.name))
            for s in self.features
            if s.name not in self.spanning
        }

        served, features = Run(serve, Part("inputs")), Run(preprocess, Part("inputs"))
        feature_judges: list[tuple[str, Judge]] = [*self.pre.items(), *((c.feature, c) for c in self.columns)]
        self.comparisons = [
            Comparison(served, Part("outputs"), list(self.pipeline.items())),
            Comparison(features, Part("features"), feature_judges),
            Comparison(Run(model, Part("features")), Part("outputs"), list(self.model.items())),
            Comparison(served, Run(model, features), list(self.merge.items())),
        ]

    def finish(self) -> tuple[list[OutputComparison], list[StageResult]]:
        """The pipeline's comparisons (the check's outputs) and the four stages."""
        pipeline = [a.finish() for a in self.pipeline.values()]
        columns = [c.finish() for c in self.columns]
        by_feature = {
            r.feature: r.comparison
            for c, r in zip(self.columns, columns, strict=True)
            if self.spanning.get(c.feature) is c
        }
        pre = [
            self.pre[s.name].finish() if s.name in self.pre else by_feature[s.name].model_copy(update={"name": s.name})
            for s in self.features
        ]
        model = [a.finish() for a in self.model.values()]
        merge = [a.finish() for a in self.merge.values()]
        files = self.files
        stages = [
            StageResult(
                stage="preprocess",
                file=self.preprocess_file,
                outputs=pre,
                columns=columns,
                passed=all(pre) and all(c.comparison.passed for c in columns),
            ),
            StageResult(stage="model", file=files.model, passed=all(model), outputs=model),
            StageResult(stage="pipeline", file=files.pipeline, passed=all(pipeline), outputs=pipeline),
            StageResult(stage="merge", file=files.pipeline, passed=all(merge), outputs=merge),
        ]
        return pipeline, stages
