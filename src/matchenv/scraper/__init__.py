"""The scraper side: match sources and the publisher that sends each match once to the fanout exchange."""
