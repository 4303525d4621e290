"""What can be pruned and how: the channel graph, its groups, their FLOPs, channel importance, the pruner."""
