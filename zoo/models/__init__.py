"""Model families of the zoo. Importing this package registers every model with timm's registry."""
from . import rim_seq  # noqa: F401
from . import preact_resnet, small_cnns  # noqa: F401
from . import snm  # noqa: F401  (snm_mnist_convnet, snm_mnist_mlp)
from . import balls  # noqa: F401  (rim_lstm_balls, lstm_balls, ...: bouncing-balls video models)
from . import relational  # noqa: F401  (sortclevr_rn)
from .preact_resnet import PreActResNet
from .staged import StagedNet, build_zoo_model
from .small_cnns import MnistConvNet, SortOfClevrCNN
from .rim_seq import SequenceModel

__all__ = ["SequenceModel", "PreActResNet", "StagedNet", "build_zoo_model", "MnistConvNet", "SortOfClevrCNN"]
