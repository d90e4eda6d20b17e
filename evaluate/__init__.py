"""evaluate: frozen or finetuned encoders -> downstream numbers (linear SVM/FC, retrieval, finetuning, fusion)."""
