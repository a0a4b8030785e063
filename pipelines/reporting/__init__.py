"""The self-contained HTML report: ``report`` assembles it from ``figures`` (matplotlib plots as
inline PNG) and ``thumbnails`` (image tiles read through the one reader, with its reject policy).
"""
