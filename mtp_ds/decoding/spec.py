"""One decoding setting as a value: strategy, tokens per pass, ConfAdapt's threshold, selfspec's layout, sampling.

`generate`, `generate_many`, `lm_eval --model mtp`, the sweep, the demo report and `mtp-ds generate` all build
or take a `DecodeSpec`, so a setting is validated, sized (`block`) and named (`label`) in one place.
Pure Python: importing it loads no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

STRATEGIES = ("static", "confadapt", "selfspec")
# selfspec's mask groups: after the last ground token, the first and the last, or every one (selfspec.group_anchors)
MASK_LAYOUTS = ("linear", "ends", "per_proposal")
DEFAULT_MASK_LAYOUT = "linear"


@dataclass(frozen=True)
class DecodeSpec:
    """`static` keeps k tokens per pass; `confadapt` the confident run of k_max predictions at `threshold`;
    `selfspec` verifies its k_max-1 proposals in the next pass (`mask_layout`), so greedy it equals k=1.
    `temperature` 0 or None: greedy; sampling draws from softmax(logits / T) cut to the `top_k` most likely tokens,
    then to the fewest whose mass reaches `top_p` (None: no cut), the order and meaning of Hugging Face's."""

    strategy: str = "static"
    k: int = 1
    k_max: int = 16
    threshold: float = 0.9
    mask_layout: str = DEFAULT_MASK_LAYOUT
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    propose_threshold: float | None = None  # selfspec: propose only the confident run of the mask slots (None: all)
    max_groups: int | None = None  # selfspec per_proposal: mask groups only at the most likely stops (None: every one)

    def __post_init__(self) -> None:
        """Each field in its own range; k <= k_max only for Static k, the one strategy that reads k (confadapt
        with k=8, k_max=4 is confadapt at k_max=4: its k is unused, not too large)."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not isinstance(self.k_max, int) or self.k_max < 1:
            raise ValueError(f"k_max must be an int >= 1, got {self.k_max!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an int >= 1, got {self.k!r}")
        if self.strategy == "static" and self.k > self.k_max:
            raise ValueError(f"k must be an int with 1 <= k <= k_max={self.k_max}, got {self.k!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 or None = greedy), got {self.temperature!r}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be an int >= 1 (None: no cut), got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (None: no cut), got {self.top_p!r}")
        if self.propose_threshold is not None and not 0.0 <= float(self.propose_threshold) <= 1.0:
            raise ValueError(
                f"propose_threshold must be in [0, 1] (None: propose every slot), got {self.propose_threshold!r}"
            )
        if self.max_groups is not None and (not isinstance(self.max_groups, int) or self.max_groups < 1):
            raise ValueError(
                f"max_groups must be an int >= 1 (None: a group at every ground token), got {self.max_groups!r}"
            )
        if self.mask_layout not in MASK_LAYOUTS:
            raise ValueError(f"mask_layout must be one of {MASK_LAYOUTS}, got {self.mask_layout!r}")

    @classmethod
    def of(cls, spec: DecodeSpec | None = None, caller: str = "generate", **settings) -> DecodeSpec:
        """`spec`, or one built from keyword settings (the thin keyword layer of `generate` and friends)."""
        unknown = sorted(set(settings) - {field.name for field in fields(cls)})
        if unknown:
            raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
        if spec is None:
            return cls(**settings)
        if settings:
            raise TypeError(f"{caller}(): pass spec= or its fields ({', '.join(sorted(settings))}), not both")
        return spec

    @property
    def block(self) -> int:
        """Most tokens one pass keeps (k for Static k, else k_max): one pass feeds block - 1 mask tokens."""
        return self.k if self.strategy == "static" else self.k_max

    @property
    def sampling(self) -> bool:
        return bool(self.temperature)

    @property
    def lossless(self) -> bool:
        """Greedy output equals the model's own k=1 decoding (selfspec verifies; Static k=1 is k=1)."""
        return self.strategy == "selfspec" or (self.strategy == "static" and self.k == 1)

    def settings(self) -> dict:
        """The fields the strategy reads (k is Static k's, threshold ConfAdapt's, mask_layout and
        propose_threshold selfspec's)."""
        if self.strategy == "static":
            return {"strategy": "static", "k": self.k}
        if self.strategy == "confadapt":
            return {"strategy": "confadapt", "k_max": self.k_max, "threshold": self.threshold}
        optional = {"propose_threshold": self.propose_threshold, "max_groups": self.max_groups}
        given = {key: value for key, value in optional.items() if value is not None}
        return {"strategy": "selfspec", "k_max": self.k_max, "mask_layout": self.mask_layout, **given}

    @property
    def reads_confidences(self) -> bool:
        """Selfspec needs its predictions' probabilities (to size proposals or choose mask groups)."""
        return self.propose_threshold is not None or (
            self.mask_layout == "per_proposal" and self.max_groups is not None
        )

    @classmethod
    def from_settings(cls, settings: dict) -> DecodeSpec:
        """Inverse of `settings()` (extra keys such as a table row's are ignored; missing ones take defaults)."""
        names = {field.name for field in fields(cls)}
        given = {key: value for key, value in settings.items() if key in names and value is not None}
        if "k_max" not in given and isinstance(given.get("k"), int):
            given["k_max"] = max(cls.k_max, given["k"])  # a Static k row names no k_max
        return cls(**given)

    @classmethod
    def parse(cls, text: str, k_max: int = 16) -> DecodeSpec:
        """`static:K`, `confadapt:TAU` (at `k_max`) or `selfspec:K[:LAYOUT][:p=P][:g=G]` (P: propose_threshold,
        G: max_groups), as the sweep and the benches take settings; ValueError naming the entry otherwise."""
        strategy, _, value = text.strip().partition(":")
        try:
            if strategy == "static":
                return cls(strategy="static", k=int(value), k_max=max(int(value), 1))
            if strategy == "confadapt":
                return cls(strategy="confadapt", threshold=float(value), k_max=k_max)
            if strategy == "selfspec":
                block, *parts = value.split(":")
                options = dict(part.split("=", 1) for part in parts if "=" in part)
                layouts = [part for part in parts if "=" not in part]
                if not set(options) - {"p", "g"} and len(layouts) <= 1:
                    return cls(
                        strategy="selfspec",
                        k_max=int(block),
                        mask_layout=layouts[0] if layouts else DEFAULT_MASK_LAYOUT,
                        propose_threshold=float(options["p"]) if "p" in options else None,
                        max_groups=int(options["g"]) if "g" in options else None,
                    )
        except ValueError:
            pass
        raise ValueError(
            f"bad entry {text!r} (expected static:K, confadapt:TAU or selfspec:K, optionally selfspec:K:LAYOUT:p=P:g=G "
            f"with LAYOUT one of {', '.join(MASK_LAYOUTS)}, P a propose_threshold, G max_groups)"
        )

    @property
    def label(self) -> str:
        """static_k3, confadapt_t0.9_kmax16, selfspec_kmax4 (selfspec_kmax8_per_proposal_p0.5: another layout, a
        propose_threshold)."""
        if self.strategy == "static":
            return f"static_k{self.k}"
        if self.strategy == "confadapt":
            return f"confadapt_t{self.threshold:g}_kmax{self.k_max}"
        suffix = "" if self.mask_layout == DEFAULT_MASK_LAYOUT else f"_{self.mask_layout}"
        if self.propose_threshold is not None:
            suffix += f"_p{self.propose_threshold:g}"
        if self.max_groups is not None:
            suffix += f"_g{self.max_groups}"
        return f"selfspec_kmax{self.k_max}{suffix}"

    def model_args(self) -> str:
        """`lm_eval --model mtp --model_args` for this setting (the strategy's own fields only)."""
        return ",".join(f"{key}={value}" for key, value in self.settings().items())

    def as_dict(self) -> dict:
        return asdict(self)
