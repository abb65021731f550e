"""What people look at: BEV renders, videos and MCAP recordings."""
