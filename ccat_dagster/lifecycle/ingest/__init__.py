"""Raw data at its SOURCE: filing the files, packaging them (stage 1), declaring lost files.

- :mod:`.filing`: register the files an instrument wrote;
- :mod:`.raw_data_packages`: filed files become RawDataPackages in the site's primary buffer;
- :mod:`.lost_files`: a SOURCE file that vanished before it was packaged.
"""
