"""LoRA files read without torch: headers, layouts, families, descriptions, demos."""
