"""CircuitLoRA's schema: the reference run whose circuits it reads, how critical layers are chosen, the
ranks and learning rates."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from ftcircuits.config.data import PresetPath
from ftcircuits.config.discovery import CircuitRunSettings, RebuildOption
from ftcircuits.options import CriticalRule, CriticalSource, LayerVariant, RankChoice
from ftcircuits.schema import Strict


class CriticalLayerRule(Strict):
    """Which layers are critical: Algorithm 1's layer scores under ``variant``, then ``rule``.

    k scales with depth: ``k_share`` of the layers (the authors' k = 5 of 24 is about 20%),
    unless ``k`` is given.
    """

    variant: LayerVariant = "source"
    rule: CriticalRule = "topk"
    k_share: float = Field(0.2, gt=0, lt=1, description="k = max(1, round(k_share * layers))")
    k: int | None = Field(None, ge=1, description="an explicit k (checked against the layer count)")
    source: CriticalSource = Field(
        "task", description="'task': the task's own circuits; 'compositional': its merged subtask circuits"
    )

    def k_for(self, layers: int) -> int:
        """Return k for a model of ``layers`` layers; ValueError if an explicit k exceeds them."""
        if self.k is not None:
            if self.k >= layers:
                raise ValueError(f"critical k={self.k} must be below the model's {layers} layers")
            return self.k
        return min(layers - 1, max(1, round(self.k_share * layers)))


class RankSettings(Strict):
    """CircuitLoRA's (r_o, r_c): matched to uniform LoRA rank ``lora_r``'s parameter count, a paper pair, or
    given."""

    choice: RankChoice = "matched"
    lora_r: int = Field(16, ge=1, description="the uniform LoRA rank whose parameter count 'matched' meets")
    ratio: float = Field(4.0, gt=1, description="'matched': the r_c / r_o aimed at (the paper's pairs: 4)")
    other: int | None = Field(None, ge=1, description="'explicit': r_o")
    critical: int | None = Field(None, ge=1, description="'explicit': r_c")
    alpha_ratio: float = Field(2.0, gt=0, description="alpha = alpha_ratio * rank (the paper: 2)")

    @model_validator(mode="after")
    def _choice_is_complete(self) -> RankSettings:
        if self.choice == "explicit" and (self.other is None or self.critical is None):
            raise ValueError("ranks.choice 'explicit' needs ranks.other and ranks.critical")
        return self


class CircuitLoraConfig(RebuildOption):
    """``jobs.circuitlora``: Algorithm 1 end to end, from a reference run's circuits to the CircuitLoRA
    fine-tune."""

    reference_run: Path | None = Field(
        None,
        description="an existing fine-tuning run whose circuits give the critical layers "
        "(else reference_config runs)",
    )
    reference_config: PresetPath = Field(
        Path("jobs/configs/finetune-tiny.yaml"), description="the reference run's preset"
    )
    circuits: CircuitRunSettings = Field(
        CircuitRunSettings(), description="how the reference run's circuits are found (without robustness)"
    )
    critical: CriticalLayerRule = CriticalLayerRule()
    ranks: RankSettings = RankSettings()
    finetune_config: PresetPath = Field(
        Path("jobs/configs/finetune-tiny.yaml"), description="the CircuitLoRA run's preset (a LoRA method)"
    )
    lr_critical: float = Field(5e-3, gt=0, description="learning rate of the critical layers' adapters")
    lr_other: float = Field(5e-3, gt=0, description="learning rate of every other trained parameter")
    out: Path = Path("runs/circuitlora-tiny")
