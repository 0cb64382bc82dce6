"""The node: everything that exists on one sandbox host, behind the ``node.Node`` contract
(``spec/node``). The control plane reaches it only through ``node.client``."""
