"""DiffusionRig: FLAME/DECA physical buffers and the personalised pixel-diffusion model."""
