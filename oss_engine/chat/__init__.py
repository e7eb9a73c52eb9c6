"""Chat layer: the o200k_harmony tokenizer, its Hugging Face files, and harmony rendering/parsing.

Import the submodules directly (tokenizer, tokenizer_files, harmony); this package re-exports nothing
so that using the tokenizer does not load openai-harmony.
"""
