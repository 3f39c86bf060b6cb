"""Layer 0, core: what every other layer uses and which imports nothing of ``pgd``: device,
folders, seeds and provenance (:mod:`~pgd.core.runtime`), run profiles
(:mod:`~pgd.core.profiles`), atomic files and safe loads (:mod:`~pgd.core.storage`), declared
settings (:mod:`~pgd.core.params`) and the torchvision import fix (:mod:`~pgd.core.compat`)."""
