"""What an agent says under a byte budget: the codec, the codebook and information-filling selection."""
