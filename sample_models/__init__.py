"""Small trained models shipped with Gate Reporter: the sample site and the tests use them."""
