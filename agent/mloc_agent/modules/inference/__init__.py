"""inference: batch generation with transformers or vLLM."""
