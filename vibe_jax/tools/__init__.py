"""Command-line tools, `python -m vibe_jax.tools.NAME`: attack previews, the
label-consistent attack's perturbations, PyTorch weight conversion, feature
extraction. Nothing in the library imports them."""
