"""Wire format, ZeroMQ transport, ROS-style nodes, launch, budgets and channel node (``v2x.comm``)."""
