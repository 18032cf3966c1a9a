"""Dataset converters and generators: they write RecBole atomic files (and the multi-view
``.view``/``.query`` tables) once, before training; :mod:`recbole_onevision.data` reads them.

``python -m recbole_onevision.preprocess.convert <source> --help`` converts a source;
``python -m recbole_onevision.preprocess.mvshop --scale mini|small|large`` generates MVShop.
"""
