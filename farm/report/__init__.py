"""`farm report`: contact sheets, strength animations, response analysis and a gallery."""
