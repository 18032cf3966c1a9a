"""What RecBole loads at run time: the plugin dataset classes and the multi-view tables' reader.
The files they read are written by :mod:`recbole_onevision.preprocess`."""
