"""The paper's models and datasets, outside the engine: import them where needed.

:mod:`tempering.zoo.models` holds the networks of the paper and the
experiments (MLP, LeNet-5 variants, the authors' EMNIST net, ResNets);
:mod:`tempering.zoo.datasets` loads MNIST-1D and the paper's image datasets
(:mod:`tempering.zoo.dataset_files` reads their files). ``import tempering``
imports neither.
"""
