"""oss-engine: an inference engine for OpenAI's gpt-oss models."""

from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LLM":  # imported lazily so that `import oss_engine` stays light
        from .llm import LLM

        return LLM
    raise AttributeError(name)
