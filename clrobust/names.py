"""The names the command line offers as choices, in a module that imports nothing heavy.

``clrobust --help`` builds every command's options from these, so it starts without
importing torch. Each tuple is the one list of its kind: the modules that implement
the choices (:mod:`clrobust.attacks`, :mod:`clrobust.data`, ...) import it from here,
and a test checks that every name has its implementation.
"""

#: End-to-end attacks (threat model II), the representation attack (threat model I) and the
#: random-noise control (random-sign L-inf noise at eps; under an L2 spec, a random direction of norm eps).
ATTACKS = ("none", "fgsm", "pgd", "pgd-l2", "apgd", "autoattack", "rep", "noise")
L2_ATTACKS = ("pgd-l2",)
#: Data sets by name: the embedded subset, the official CIFAR python folders, image folders.
DATASETS = ("cifar10-mini", "cifar10", "cifar100", "imagefolder")
#: How ``--n-samples`` images are chosen: a seeded class-stratified subset, or the first N.
SAMPLINGS = ("stratified", "first")
SPLITS = ("train", "test")
#: ResNet stems of third-party files.
STEMS = ("cifar", "cifar-pad2", "cifar-norelu", "imagenet")
#: Training: schemes, scenarios, adversarial methods of contrastive pre-training, view augmentations.
SCHEMES = ("simclr", "supcon", "supervised")
SCENARIOS = ("st", "at", "pat", "fat")
ADV_METHODS = ("pgd", "clae")
#: contrastive PGD pre-training: what is perturbed (clrobust.train.trainer.TrainConfig.adv_view)
ADV_VIEWS = ("plain", "crop-flip", "view", "pair")
#: supervised AT / PAT / FAT objectives
ADV_OBJECTIVES = ("clean+adv", "adv")
PRESETS = ("paper",)
AUGMENTS = ("simclr", "crop-flip")
#: A model's classifier: its own head when it fits (auto), or always a linear probe on frozen features.
CLASSIFIER_MODES = ("auto", "probe")
#: Bootstrap replicates over images by default (``--bootstrap``).
DEFAULT_REPLICATES = 1000
#: The streamed similarity of compare-layers (``clrobust.metrics`` registry's built-in entries).
METRICS = ("linear-cka",)
#: The paper's figure families, in the order ``figures all`` draws them.
FIGURE_FAMILIES = ("st-clean-vs-adv", "at-probes", "eps-sweep", "cross-model")
