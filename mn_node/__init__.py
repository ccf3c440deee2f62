"""mirror-neuron: MirrorNeuron's cluster stack, rebuilt in Python."""

__version__ = "0.1.0"

from mn_node.errors import ConfigError, MirrorNeuronError, UnavailableError

__all__ = ["ConfigError", "MirrorNeuronError", "UnavailableError", "__version__"]
