"""The synthetic traffic world, its LiDAR and the channel models (``v2x.sim``)."""
