"""Results that last: the content-addressed store of finished explanations (``store``), its mirror
to a Hugging Face dataset repo (``mirror``). Used by the app (links ``?result=<id>``) and by
``latentshift results list|check|delete|sweep``."""
