"""Tool calling without torch: which markup a model writes its calls in (families), reading calls out of its
output as it streams (parser), the grammar that makes a call valid by construction (grammar), and the prompt for
models whose chat template does not describe tools (prompted)."""
