"""The three refnet services and the ``refnet`` command that runs them."""
