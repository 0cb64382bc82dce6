"""The node's volumes: their disks (``store``), the content calls on them (``contents``), when
they are mounted (``service``), and the node messages that reach them (``handlers``)."""
