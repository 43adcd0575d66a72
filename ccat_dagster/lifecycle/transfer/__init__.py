"""Moving packages between sites (stages 2 to 4).

- :mod:`.data_transfer_packages`: completed packages are bundled into DataTransferPackages;
- :mod:`.routing`: which site each bundle goes to (round robin, routes, relays);
- :mod:`.transfers`: the destination pulls a bundle, then unpacks and verifies it.
"""
