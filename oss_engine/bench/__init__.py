"""`oss-engine bench`: the GPU's ceilings, the engine's decode and prefill rates against them, and optionally
single kernels and Hugging Face transformers on the same weights (bench/main.py wires the phases)."""
