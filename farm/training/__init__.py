"""Training the embedded tiny model and its demo LoRAs from pictures it draws itself."""
