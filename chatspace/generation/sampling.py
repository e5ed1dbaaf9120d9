"""vLLM `SamplingParams`, as the original chatspace took them, into chatspace's `Sampling`:
the settings chatspace carries are mapped, any other one set to a non-default value is a
`ValueError` naming it (never dropped unseen)."""

from __future__ import annotations

from typing import Any

from chatspace.steering.outputs import Sampling

# mapped onto Sampling, or applied by the compatibility layer (skip_special_tokens), or with
# no effect on the tokens (detokenize: texts are decoded here; output_kind and the like)
MAPPED = {"max_tokens", "temperature", "top_p", "seed", "ignore_eos", "logprobs",
          "skip_special_tokens", "detokenize", "output_kind", "stream_interval", "skip_clone",
          "spaces_between_special_tokens", "extra_args"}
VLLM_DEFAULT_MAX_TOKENS = 16


def sampling_params(params: Any, kwargs: dict[str, Any]) -> Any:
    """The caller's `SamplingParams`, or one built from keyword arguments (the original's
    ``generate(prompts, max_tokens=8)``); vLLM's own validation errors become ValueError."""
    from vllm import SamplingParams

    if params is not None:
        if kwargs:
            raise ValueError("give either sampling_params or sampling keyword arguments (got "
                             f"both: {', '.join(sorted(kwargs))})")
        return params
    unknown = sorted(set(kwargs) - set(SamplingParams.__struct_fields__))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)} (neither this "
                        "method's nor SamplingParams')")
    try:
        return SamplingParams(**kwargs)
    except Exception as exc:  # vLLM 0.32: VLLMValidationError, not a ValueError
        if isinstance(exc, ValueError) or type(exc).__name__.startswith("VLLM"):
            raise ValueError(str(exc)) from None
        raise


def to_sampling(params: Any) -> tuple[Sampling, bool]:
    """chatspace's `Sampling` for vLLM `SamplingParams` (or a `Sampling` as it is), and
    whether texts skip special tokens."""
    if params is None or isinstance(params, Sampling):
        return params or Sampling(max_tokens=VLLM_DEFAULT_MAX_TOKENS), True
    from vllm import SamplingParams

    default = SamplingParams()
    if params.n != 1:
        raise ValueError(f"SamplingParams.n={params.n}: one sample per prompt here (send the "
                         "prompt n times)")
    for name in SamplingParams.__struct_fields__:
        if name in MAPPED or name.startswith("_") or name == "n":
            continue
        if getattr(params, name) != getattr(default, name):
            raise ValueError(f"SamplingParams.{name}={getattr(params, name)!r} is not "
                             "supported by chatspace (supported: max_tokens, temperature, "
                             "top_p, seed, ignore_eos, logprobs, skip_special_tokens)")
    try:
        sampling = Sampling(max_tokens=params.max_tokens or VLLM_DEFAULT_MAX_TOKENS,
                            temperature=params.temperature, top_p=params.top_p,
                            seed=params.seed, ignore_eos=params.ignore_eos,
                            logprobs=params.logprobs is not None,
                            top_logprobs=params.logprobs or 0)
    except ValueError as exc:
        raise ValueError(f"SamplingParams: {exc}") from None
    return sampling, params.skip_special_tokens
