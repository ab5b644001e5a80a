"""Every sentence the bot says in Japanese: questions, hints, phrases, labels and tool messages.

Adding a language is one more file like this one (and its entry in ``pipeline.dialog.phrases``).
"""

# the question for each slot
QUESTIONS = {
    "date": "ご来店のご希望日をお聞かせください。",
    "time": "何時ごろのご来店をご希望でしょうか。",
    "party_size": "何名様でいらっしゃいますか。",
    "name": "ご予約のお名前をお伺いできますか。",
    "phone": "ご連絡先のお電話番号をお願いいたします。",
    "note": "アレルギーやお祝いなど、何かご要望はございますか。",
}

# how to answer, after a failed try
HINTS = {
    "date": "「12月24日」や「来週の金曜日」のようにおっしゃってください。",
    "time": "「19時」や「午後7時半」のようにおっしゃってください。",
    "party_size": "「2名」のように人数をおっしゃってください。",
    "name": "「田中です」のようにお名前をおっしゃってください。",
    "phone": "「090、1234、5678」のように、数字をひとつずつおっしゃってください。",
    "note": "ご要望がなければ「特にありません」とおっしゃってください。",
    "confirm": "よろしければ「はい」、訂正がある場合は訂正内容をおっしゃってください。",
}

# everything else the rules agent says
PHRASES = {
    "greeting": "お電話ありがとうございます。{name}でございます。ご予約を承ります。ご来店のご希望日をお聞かせください。",
    "sorry_again": "恐れ入ります、もう一度お願いできますか。",
    "give_up": "申し訳ございません、うまくお伺いできませんでした。お手数ですが、お店の電話番号{phone}まで直接おかけいただくか、時間をおいておかけ直しください。お電話ありがとうございました。",
    "booked": "ありがとうございます。ご予約を承りました。予約番号は{id}です。{when}、{name}様のご来店を心よりお待ちしております。ほかに何かございますか。",
    "which_fix": "失礼いたしました。どちらを訂正いたしましょうか。",
    "ask_new_value": "{label}をどのように変更いたしましょうか。",
    "say_slot_again": "失礼いたしました。{label}をもう一度お願いできますか。",
    "changed": "{label}を{value}に変更いたしました。",
    "declined_end": "承知いたしました。今回のご予約はお取りしておりません。またのお電話をお待ちしております。失礼いたします。",
    "goodbye_booked": "お電話ありがとうございました。ご来店をお待ちしております。失礼いたします。",
    "goodbye": "お電話ありがとうございました。失礼いたします。",
    "goodbye_unbooked": "承知いたしました。ご予約はお取りしておりません。またのお電話をお待ちしております。失礼いたします。",
    "anything_else": "ほかに何かございますか。",
    "after_booking_change": "ご予約はすでに確定しております。変更やキャンセルは、お店の電話番号{phone}までお願いいたします。",
    "back_to_booking": "",
    "ack_book": "ご予約ですね、かしこまりました。",
    "ack_note": "ご要望を承りました。",
    "ack_no_note": "かしこまりました。",
    "ack_phone": "お電話番号を承りました。",
    "ack_name": "{name}様ですね。",
    "ack_when": "{when}ですね。",
    "available_dates": "ご予約可能な日は、{dates}です。",
    "free_times": "{date}は、{times}にお席をご用意できます。",
    "no_free": "申し訳ございません、しばらく空きがございません。",
    "wait_ok": "かしこまりました。ごゆっくりどうぞ。",
    "repeat_lead": "もう一度申し上げます。",
    "phone_more": "{digits}ですね。続きをお願いいたします。",
    "confirm_change": "{label}を{value}に変更してよろしいでしょうか。",
    "keep_value": "かしこまりました。{label}は{value}のままにいたします。",
    "confirm_end": "ご予約のお手続きをおやめになりますか。",
    "choose": "{a}と{b}、どちらになさいますか。",
    "which_date": "{a}でしょうか、それとも{b}でしょうか。",
    "confirm_guess": "{value}でよろしいでしょうか。",
    "confirm_no_note": "特にご要望はないということでよろしいでしょうか。",
    "confirm_name": "お名前は{name}様でよろしいでしょうか。",
    "note_what": "どのようなご要望でしょうか。",
    "no_answer": "申し訳ございません、その件はこちらではお答えいたしかねます。お手数ですが、お店の電話番号{phone}までお問い合わせください。",
    "person": "申し訳ございません、こちらのお電話ではお店の者におつなぎできません。お店の電話番号{phone}までおかけください。",
    "manage_phone": "ご予約の際のお電話番号をお願いいたします。",
    "manage_not_found": "{phone}でのご予約は見つかりませんでした。",
    "manage_id_not_found": "予約番号{id}のご予約は見つかりませんでした。",
    "manage_which_date": "ご予約が{n}件ございます。何日のご予約でしょうか。",
    "manage_found": "{when}、{party}、{name}様のご予約ですね。",
    "check_done": "ご予約はこちらの内容で承っております。ほかに何かございますか。",
    "cancel_confirm": "こちらのご予約をキャンセルしてよろしいでしょうか。",
    "cancelled": "ご予約をキャンセルいたしました。ほかに何かございますか。",
    "cancel_kept": "かしこまりました。ご予約はそのままにしております。ほかに何かございますか。",
    "change_what": "どのようにご変更なさいますか。",
    "change_confirm": "{when}、{party}、{name}様に変更してよろしいでしょうか。",
    "changed_booking": "ご予約を変更いたしました。{when}、{party}でお待ちしております。ほかに何かございますか。",
    "manage_store_error": "申し訳ございません、ただいま予約システムに接続できません。お手数ですがお店まで直接お電話ください。",
    "caller_id_offer": "お電話番号は、今おかけの末尾{last4}の番号でよろしいでしょうか。",
    "transferring": "かしこまりました。お店の者におつなぎいたします。少々お待ちください。",
    "give_up_transfer": "申し訳ございません、うまくお伺いできませんでした。お店の者におつなぎいたします。少々お待ちください。",
    "keypad_phone": "お電話のボタンで番号を押していただくこともできます。最後にシャープを押してください。",
    "keypad_yes_no": "「はい」は1、「いいえ」は2のボタンでもお答えいただけます。",
}

# what each slot is called in a sentence
LABELS = {
    "date": "ご来店日",
    "time": "お時間",
    "party_size": "人数",
    "name": "お名前",
    "phone": "お電話番号",
    "note": "ご要望",
}

# what the booking tools say about a value
MESSAGES = {
    "unparsed": "{label}をうまく聞き取れませんでした。",
    "invalid_phone": "お電話番号は市外局番から10桁か11桁でお願いいたします。{heard}",
    "already_booked": "ご予約はすでに確定しております。変更はお店まで直接お電話ください。",
    "bad_name": "お名前をもう一度お願いできますか。",
}
