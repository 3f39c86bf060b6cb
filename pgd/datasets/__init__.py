"""Layer 1, datasets: one module per dataset (:mod:`~pgd.datasets.cmnist`,
:mod:`~pgd.datasets.celeba`, :mod:`~pgd.datasets.bffhq`), what they share (:mod:`~.base`: item
format, batches, groups; :mod:`~.images`: image files and transforms; :mod:`~.archives`: safe
extraction and download diagnosis; :mod:`~.standins`: synthetic stand-ins), and the registry
(:mod:`~.registry`). Imports only :mod:`pgd.core`."""
