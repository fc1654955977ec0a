"""Speed benchmark: compute ceiling, naive ImageFolder pipeline and histoclass's own paths
(``histoclass bench``)."""
