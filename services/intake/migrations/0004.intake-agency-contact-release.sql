-- depends: 0003.intake-contact-lookups-checkins
-- Contact details released to an accepting agency through its inbox or API name the agency
-- user (or API key) who asked, so the accounting of disclosures says who saw them.
ALTER TABLE disclosures ADD COLUMN recipient_user text;
